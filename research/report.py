"""Tables and plots from tracked runs: study reports, written as markdown and PNGs.

Inputs are plain rows and figures (from ``sweep.trials_table`` /
``sweep.study_figures`` and MLflow metrics), so the same functions serve
`research study report` and the analysis notebooks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


def figures_to_files(figures: dict[str, Any], out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        paths.append(path)
    return paths


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x, 3) for x in v) + "]"
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(key)) for key, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def _param_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in rows:
        for k in r.get("params", {}):
            if k not in names and not k.startswith("w_"):
                names.append(k)
    return names


def flatten_trial_rows(rows: Sequence[dict[str, Any]], objective_names: Sequence[str]) -> list[dict[str, Any]]:
    flat = []
    for r in rows:
        f = {k: v for k, v in r.items() if k not in ("params", "values")}
        f.update(r.get("params", {}))
        for name, v in zip(objective_names, r.get("values") or []):
            f[name] = v
        flat.append(f)
    return flat


def study_markdown(
    name: str,
    rows: Sequence[dict[str, Any]],
    *,
    objective_names: Sequence[str],
    directions: Sequence[str],
    parent_metrics: dict[str, float],
    figure_files: Sequence[Path] = (),
    settings: dict[str, Any] | None = None,
) -> str:
    """The study report: settings, best vs enqueued defaults, finalized test figures, all trials, plots."""
    flat = flatten_trial_rows(rows, objective_names)
    params = _param_columns(rows)
    obj = objective_names[0]
    sign = -1 if directions[0] == "maximize" else 1
    complete = [r for r in flat if r["state"] == "COMPLETE"]
    ranked = sorted(complete, key=lambda r: (sign * r[obj], r["number"]))
    lines = [f"# Study `{name}`", ""]
    if settings:
        lines += [", ".join(f"{k}: {v}" for k, v in settings.items()), ""]
    states = [r["state"] for r in flat]
    lines += [f"Trials: {len(flat)} ({states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned, {states.count('FAIL')} failed).", ""]

    cols = [("number", "trial"), *[(p, p) for p in params], ("teacher_weights", "teacher weights"),
            *[(o, o) for o in objective_names], ("test_accuracy", "test acc (not used to select)"), ("duration_s", "seconds")]
    cols = [c for c in cols if any(r.get(c[0]) is not None for r in flat)]
    if ranked:
        best = dict(ranked[0], label="best")
        defaults = [dict(r, label="enqueued default") for r in flat if r.get("enqueued") and r["state"] == "COMPLETE"]
        lines += ["## Best trial against the enqueued defaults", "",
                  markdown_table([best, *defaults], [("label", ""), *cols]), ""]
    finals = sorted({k.split("_")[1] for k in parent_metrics if k.startswith("final_") and k.endswith("_test_accuracy_mean")})
    if finals:
        frows = [{"config": f, "trial": int(parent_metrics[f"final_{f}_trial"]), "seeds": int(parent_metrics[f"final_{f}_seeds"]),
                  "test accuracy": f"{100 * parent_metrics[f'final_{f}_test_accuracy_mean']:.2f} ± {100 * parent_metrics[f'final_{f}_test_accuracy_std']:.2f} %"}
                 for f in finals]
        lines += ["## Finalized on the whole training split (test set, mean ± std over seeds)", "",
                  markdown_table(frows, [("config", "config"), ("trial", "from trial"), ("seeds", "seeds"), ("test accuracy", "test accuracy")]), ""]
    lines += ["## All trials", "", markdown_table(sorted(flat, key=lambda r: r["number"]), [*cols[:1], ("state", "state"), *cols[1:], ("run_id", "MLflow run")]), ""]
    if figure_files:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in figure_files] + [""]
    return "\n".join(lines)
