"""Tables and plots from tracked runs: study reports (markdown and PNGs) and the
analysis notebooks in ``notebooks/``.

The report functions take plain rows and figures (from ``sweep.trials_table`` /
``sweep.study_figures`` and MLflow metrics). The notebook functions (below the
report) read an experiment's runs into pandas through ``research.tracking``
(``runs_frame``, ``trials_of``, ...) and draw matplotlib figures from them;
``study_run_figures`` gives `research study report` the same figures.
"""

from __future__ import annotations

import os
import re
import statistics
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd


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


def kind_groups(complete: Sequence[dict[str, Any]], params: Sequence[str], objective: str, direction: str) -> list[dict[str, Any]]:
    """One row per value of every searched ``*.kind`` parameter (a temperature or weighting kind):
    how many completed trials drew it, their best and mean ``objective``, and the best one's number."""
    rows = []
    for p in (p for p in params if p.endswith(".kind")):
        groups: dict[Any, list[dict[str, Any]]] = {}
        for r in complete:
            if r.get(p) is not None and r.get(objective) is not None:
                groups.setdefault(r[p], []).append(r)
        for kind, rs in groups.items():
            pick = max if direction == "maximize" else min
            best = pick(rs, key=lambda r: r[objective])
            rows.append({"searched": p, "kind": kind, "trials": len(rs), "best": best[objective],
                         "mean": sum(r[objective] for r in rs) / len(rs), "best_trial": best["number"]})
    return sorted(rows, key=lambda r: (r["searched"], -r["best"] if direction == "maximize" else r["best"]))


def study_markdown(
    name: str,
    rows: Sequence[dict[str, Any]],
    *,
    objective_names: Sequence[str],
    directions: Sequence[str],
    parent_metrics: dict[str, float],
    figure_files: Sequence[Path] = (),
    settings: dict[str, Any] | None = None,
    best_trial: int | None = None,
) -> str:
    """The study report: settings, best vs enqueued defaults, finalized test figures, all trials, plots.
    ``best_trial``: the study's chosen best (sweep.best_trials; on the Pareto front when several
    objectives); default: the best by the first objective."""
    flat = flatten_trial_rows(rows, objective_names)
    params = _param_columns(rows)
    obj = objective_names[0]
    sign = -1 if directions[0] == "maximize" else 1
    complete = [r for r in flat if r["state"] == "COMPLETE"]
    ranked = sorted(complete, key=lambda r: (r["number"] != best_trial, sign * r[obj], r["number"]))
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
    kinds = kind_groups(complete, params, obj, directions[0])
    if kinds:
        lines += ["## Completed trials by kind", "", markdown_table(kinds, [("searched", "searched"), ("kind", "kind"), ("trials", "trials"),
                                                                        ("best", f"best {obj}"), ("mean", f"mean {obj}"), ("best_trial", "best trial")]), ""]
    lines += ["## All trials", "", markdown_table(sorted(flat, key=lambda r: r["number"]), [*cols[:1], ("state", "state"), *cols[1:], ("run_id", "MLflow run")]), ""]
    if figure_files:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in figure_files] + [""]
    return "\n".join(lines)


# =====================================================================================
# Tracked runs as data frames, and the plots of the analysis notebooks
# (notebooks/01_study_overview, 02_distillation_vs_compression, 03_teachers).
#
# Every function below takes plain pandas frames, or an experiment name and a
# tracking URI; MLflow is reached through ``research.tracking`` only. Plots are
# ``matplotlib.figure.Figure`` objects made without pyplot (nothing leaks, and a
# notebook shows the returned figure once); ``figures_to_files`` writes them.
# =====================================================================================

TRIAL_STATES = {"FINISHED": "COMPLETE", "KILLED": "PRUNED", "FAILED": "FAIL", "RUNNING": "RUNNING", "SCHEDULED": "RUNNING"}
_KEEP_MLFLOW_TAGS = {"mlflow.runName": "run_name", "mlflow.parentRunId": "parent_run_id", "mlflow.source.git.commit": "git_commit"}
_BOOLS = {"True": True, "False": False, "true": True, "false": False}
PARETO_METRICS = ("test_accuracy", "val_accuracy", "size_bytes", "params", "params_nonzero", "latency_b1_ms", "latency_b256_ms")


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking store to read: ``uri`` if given, else ``$MLFLOW_TRACKING_URI``,
    else the nearest ``mlruns/mlflow.db`` at or above the working directory (a
    notebook runs in ``notebooks/``), else the project's ``sqlite:///mlruns/mlflow.db``."""
    if uri:
        return uri
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        db = folder / "mlruns" / "mlflow.db"
        if db.is_file():
            return f"sqlite:///{db}"
    return f"sqlite:///{Path(__file__).resolve().parents[1] / 'mlruns' / 'mlflow.db'}"


def _tracker(uri: str | None):
    from .tracking import Tracker

    uri = resolve_tracking_uri(uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise FileNotFoundError(f"no tracking store at {uri} (run a study first, or pass tracking_uri)")
    return Tracker(uri)


def _convert(col: pd.Series, *, numeric: bool = True) -> pd.Series:
    """Strings from MLflow params/tags back to booleans or numbers when the whole column is."""
    values = col.dropna()
    if values.empty:
        return col
    text = values.astype(str)
    if text.isin(list(_BOOLS)).all():
        return col.map(lambda v: _BOOLS.get(str(v), v) if isinstance(v, str) else v)
    if numeric:
        text = text.replace("None", None).dropna()
        try:
            pd.to_numeric(text)
        except (TypeError, ValueError):
            return col
        return pd.to_numeric(col.replace("None", None), errors="coerce")
    return col


def clean_runs(raw: pd.DataFrame) -> pd.DataFrame:
    """A frame from ``mlflow.search_runs`` with readable columns: ``metrics.x``, ``params.x``
    and ``tags.x`` become ``x`` (metrics win a name clash, then params; the loser keeps its
    prefix), numbers and booleans logged as strings become numbers and booleans,
    MLflow's own tags are dropped except ``run_name``, ``parent_run_id`` and ``git_commit``,
    and ``duration_s`` is added."""
    df = raw.copy()
    out = pd.DataFrame(index=df.index)
    for col in ("run_id", "experiment_id", "status", "start_time", "end_time", "artifact_uri"):
        if col in df:
            out[col] = df[col]
    for tag, name in _KEEP_MLFLOW_TAGS.items():
        out[name] = df[f"tags.{tag}"] if f"tags.{tag}" in df else None
    if "start_time" in df and "end_time" in df:
        out["duration_s"] = (pd.to_datetime(df["end_time"]) - pd.to_datetime(df["start_time"])).dt.total_seconds()
    columns: dict[str, pd.Series] = {}
    for prefix in ("metrics.", "params.", "tags."):
        for col in [c for c in df.columns if c.startswith(prefix)]:
            key = col[len(prefix):]
            if prefix == "tags." and key.startswith("mlflow."):
                continue
            taken = key in columns or key in out.columns or (prefix == "params." and key in _TAG_WINS and f"tags.{key}" in df)
            name = col if taken else key
            series = df[col]
            columns[name] = series if prefix == "metrics." else _convert(series, numeric=prefix == "params." or key in _NUMERIC_TAGS)
    return pd.concat([out, pd.DataFrame(columns, index=df.index)], axis=1)


_NUMERIC_TAGS = {"trial_number", "seed", "best_trial", "from_trial"}
# The run's own seed is its tag; the ``seed`` param can be the config's seed.
_TAG_WINS = {"seed"}


def runs_frame(experiment: str, tracking_uri: str | None = None, *, filter_string: str = "") -> pd.DataFrame:
    """Every run of ``experiment`` (MLflow search syntax in ``filter_string``), cleaned by ``clean_runs``."""
    tracker = _tracker(tracking_uri)
    if tracker.experiment_id(experiment, create=False) is None:
        known = ", ".join(sorted(e.name for e in tracker.client.search_experiments())) or "none"
        raise LookupError(f"no MLflow experiment named {experiment!r} in {tracker.uri} (experiments there: {known})")
    return clean_runs(tracker.search_runs_frame(experiment, filter_string))


def _drop_empty(df: pd.DataFrame) -> pd.DataFrame:
    return df.dropna(axis=1, how="all")


def _with_role(runs: pd.DataFrame, *roles: str) -> pd.DataFrame:
    if "role" not in runs:
        return runs.iloc[0:0]
    return runs[runs["role"].isin(roles)]


def teacher_weights(frame: pd.DataFrame) -> pd.DataFrame:
    """The teachers' weights of each run, normalised onto the simplex: columns
    ``weight_0 .. weight_{K-1}`` (empty when the runs have no searched weights).
    Read from ``distill.teacher_weights.k`` (the logged, normalised config), else a
    ``distill.teacher_weights`` string like "[0.2, 0.5, 0.3]", else Optuna's ``trial.w_k``."""
    cols = sorted((c for c in frame.columns if re.fullmatch(r"distill\.teacher_weights\.\d+", str(c))), key=lambda c: int(c.rsplit(".", 1)[1]))
    if cols:
        w = frame[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    elif "distill.teacher_weights" in frame and frame["distill.teacher_weights"].map(_parse_list).notna().any():
        lists = frame["distill.teacher_weights"].map(_parse_list)
        k = max(len(v) for v in lists.dropna())
        w = np.array([v if v is not None and len(v) == k else [np.nan] * k for v in lists], dtype=float)
    else:
        raw = sorted((c for c in frame.columns if re.fullmatch(r"trial\.w_\d+", str(c))), key=lambda c: int(c.rsplit("_", 1)[1]))
        if not raw:
            return pd.DataFrame(index=frame.index)
        w = frame[raw].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        w = w / w.sum(axis=1, keepdims=True)
    return pd.DataFrame(w, index=frame.index, columns=[f"weight_{k}" for k in range(w.shape[1])])


def _parse_list(v: Any) -> list[float] | None:
    if isinstance(v, (list, tuple)):
        return [float(x) for x in v]
    if not isinstance(v, str) or not v.strip().startswith("["):
        return None
    try:
        return [float(x) for x in v.strip()[1:-1].split(",") if x.strip()]
    except ValueError:
        return None


def trials_of(runs: pd.DataFrame) -> pd.DataFrame:
    """The trial runs (tag role=trial) of a cleaned runs frame, one row per trial in trial
    order: ``trial``, ``state`` (Optuna's: COMPLETE, PRUNED, FAIL), ``enqueued``,
    ``temperature``, ``alpha``, ``weight_k`` when searched, then every metric and param."""
    t = _drop_empty(_with_role(runs, "trial")).copy()
    if t.empty:
        return t
    t["trial"] = pd.to_numeric(t.get("trial_number"), errors="coerce").astype("Int64")
    state = t["status"].map(TRIAL_STATES).fillna(t["status"])
    if "optuna_state" in t:  # set by the study for trials that failed before their run ended
        state = t["optuna_state"].where(t["optuna_state"].notna(), state)
    t["state"] = state
    t["enqueued"] = t["enqueued"].fillna(False).astype(bool) if "enqueued" in t else False
    for name in ("temperature", "alpha"):
        if f"distill.{name}" in t and name not in t:
            t[name] = pd.to_numeric(t[f"distill.{name}"], errors="coerce")
    weights = teacher_weights(t)
    t = pd.concat([t.drop(columns=[c for c in weights.columns if c in t]), weights], axis=1)
    first = ["trial", "run_name", "state", "enqueued", "temperature", "alpha", *weights.columns]
    first = [c for c in first if c in t]
    return t[first + [c for c in t.columns if c not in first]].sort_values("trial").reset_index(drop=True)


def trial_runs(experiment: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """The trial runs of a study's experiment, cleaned (see ``trials_of``)."""
    return trials_of(runs_frame(experiment, tracking_uri))


def study_run_of(runs: pd.DataFrame) -> pd.Series | None:
    """The study's parent run (tag role=study): best trial, final_* test metrics; the latest if several."""
    parents = _with_role(runs, "study")
    if parents.empty:
        return None
    return _drop_empty(parents.sort_values("start_time")).iloc[-1]


def final_runs_of(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs of ``research study finalize``: roles final_best, final_default, ... with a ``config`` column."""
    if "role" not in runs:
        return runs.iloc[0:0]
    f = runs[runs["role"].astype(str).str.startswith("final_")]
    if f.empty:
        return f.assign(config=pd.Series(dtype=str))
    f = _drop_empty(f).copy()
    f["config"] = f["role"].str.removeprefix("final_")
    return f.reset_index(drop=True)


def trials_overview(trials: pd.DataFrame, objective: str = "val_accuracy") -> pd.DataFrame:
    """The table of trials: number, state, enqueued, searched values, objective, test accuracy, seconds."""
    searched = [c for c in trials.columns if c in ("temperature", "alpha") or str(c).startswith("weight_")]
    searched += [c for c in trials.columns if str(c).startswith("trial.") and not str(c).startswith("trial.w_")
                 and str(c).removeprefix("trial.") not in ("temperature", "alpha")]
    cols = ["trial", "state", "enqueued", *searched, objective, "test_accuracy", "duration_s", "run_id"]
    return trials[[c for c in dict.fromkeys(cols) if c in trials]].reset_index(drop=True)


def best_trial(trials: pd.DataFrame, objective: str = "val_accuracy", direction: str = "maximize") -> pd.Series | None:
    """The best completed trial by ``objective`` (the lowest trial number on a tie), or None."""
    done = trials[trials["state"] == "COMPLETE"].dropna(subset=[objective]) if objective in trials and not trials.empty else trials.iloc[0:0]
    if done.empty:
        return None
    order = done.sort_values([objective, "trial"], ascending=[direction != "maximize", True])
    return order.iloc[0]


def best_vs_defaults(trials: pd.DataFrame, objective: str = "val_accuracy", direction: str = "maximize") -> pd.DataFrame:
    """The best completed trial and every enqueued default (published settings), with
    the objective and test accuracy, and the objective's gap to the best."""
    best = best_trial(trials, objective, direction)
    if best is None:
        return pd.DataFrame()
    defaults = trials[trials["enqueued"] & (trials["state"] == "COMPLETE")]
    rows = pd.concat([trials.loc[[best.name]].assign(label="best"), defaults.assign(label="enqueued default")], ignore_index=True)
    table = trials_overview(rows, objective)
    table.insert(0, "label", rows["label"])
    table[f"{objective} vs best"] = pd.to_numeric(table[objective]) - float(best[objective])
    return table.drop(columns=["run_id"], errors="ignore")


def finalized(study_run: pd.Series | None, final_runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """`research study finalize` results from the parent run's ``final_<config>_*`` metrics:
    config, from trial, seeds, test accuracy mean and std (empty when not finalized)."""
    if study_run is None:
        return pd.DataFrame(columns=["config", "trial", "seeds", "test_accuracy_mean", "test_accuracy_std"])
    configs = sorted({m.group(1) for k in study_run.index if (m := re.fullmatch(r"final_(.+)_test_accuracy_mean", str(k)))},
                     key=lambda c: (c != "best", c))
    rows = []
    for c in configs:
        row = {"config": c, "trial": study_run.get(f"final_{c}_trial"), "seeds": study_run.get(f"final_{c}_seeds"),
               "test_accuracy_mean": study_run[f"final_{c}_test_accuracy_mean"], "test_accuracy_std": study_run.get(f"final_{c}_test_accuracy_std")}
        if final_runs is not None and not final_runs.empty and "test_accuracy" in final_runs:
            accs = final_runs.loc[final_runs["config"] == c, "test_accuracy"].dropna()
            row["per_seed"] = [round(float(a), 4) for a in accs]
        rows.append(row)
    out = pd.DataFrame(rows, columns=["config", "trial", "seeds", "test_accuracy_mean", "test_accuracy_std", *(["per_seed"] if rows and "per_seed" in rows[0] else [])])
    for c in ("trial", "seeds"):
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("Int64")
    return out


# ----------------------------------------------------------------------------- plots: one study


def _figure(w: float = 7.5, h: float = 5.0):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def plot_temperature_alpha(trials: pd.DataFrame, metric: str = "val_accuracy", direction: str = "maximize"):
    """The metric over temperature (log axis) and alpha: completed trials coloured by the
    metric, interpolated between them when there are enough, enqueued defaults boxed,
    the best starred, pruned or failed trials as grey crosses."""
    from matplotlib.tri import Triangulation

    fig = _figure()
    ax = fig.add_subplot()
    if not {"temperature", "alpha", metric} <= set(trials.columns):
        ax.text(0.5, 0.5, "temperature and alpha were not both searched", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    done = trials[(trials["state"] == "COMPLETE")].dropna(subset=["temperature", "alpha", metric])
    other = trials[trials["state"] != "COMPLETE"].dropna(subset=["temperature", "alpha"])
    x, y, z = np.log10(done["temperature"].astype(float)), done["alpha"].astype(float), done[metric].astype(float)
    vmin, vmax = (float(z.min()), float(z.max())) if len(z) else (0, 1)
    if len(done) >= 4 and np.ptp(x) > 0 and np.ptp(y) > 0:
        try:
            ax.tricontourf(Triangulation(x, y), z, levels=12, cmap="viridis", alpha=0.35, vmin=vmin, vmax=vmax)
        except (ValueError, RuntimeError):  # degenerate (collinear) points
            pass
    sc = ax.scatter(x, y, c=z, cmap="viridis", vmin=vmin, vmax=vmax, s=60, edgecolors="white", linewidths=0.8, zorder=3)
    fig.colorbar(sc, ax=ax, label=metric)
    if not other.empty:
        ax.scatter(np.log10(other["temperature"].astype(float)), other["alpha"], marker="x", color="grey", label="pruned / failed", zorder=3)
    enq = done[done["enqueued"]]
    if not enq.empty:
        ax.scatter(np.log10(enq["temperature"].astype(float)), enq["alpha"], marker="s", s=150, facecolors="none", edgecolors="black",
                   linewidths=1.2, label="enqueued default", zorder=4)
    best = best_trial(trials, metric, direction)
    if best is not None:
        ax.scatter([np.log10(float(best["temperature"]))], [float(best["alpha"])], marker="*", s=320, color="red", edgecolors="black",
                   label=f"best: trial {int(best['trial'])} ({float(best[metric]):.4f})", zorder=5)
    for _, r in done.iterrows():
        ax.annotate(str(int(r["trial"])), (np.log10(float(r["temperature"])), float(r["alpha"])), xytext=(4, 4), textcoords="offset points", fontsize=7)
    allx = np.log10(trials["temperature"].dropna().astype(float))
    lo, hi = (float(allx.min()), float(allx.max())) if len(allx) else (0.0, np.log10(20))
    pad = max(0.05, 0.06 * (hi - lo))
    ax.set_xlim(lo - pad, hi + pad)
    nice = np.array([1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 30, 40, 50, 100])
    inside = nice[(np.log10(nice) >= lo - pad) & (np.log10(nice) <= hi + pad)]
    ticks = inside[:: max(1, len(inside) // 8)] if len(inside) >= 2 else nice[(nice >= 10 ** (lo - 1)) & (nice <= 10 ** (hi + 1))]
    ax.set_xticks(np.log10(ticks), [f"{t:g}" for t in ticks])
    ax.set_xlabel("temperature T (log scale)")
    ax.set_ylabel("alpha (weight of the hard-label loss)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title(f"{metric} over temperature and alpha ({len(done)} completed trials)")
    ax.legend(loc="best", fontsize=8)
    return fig


def plot_trial_history(trials: pd.DataFrame, metric: str = "val_accuracy", direction: str = "maximize"):
    """The metric of every trial in order, the best so far, the enqueued defaults marked,
    and the test accuracy (reported, not used to select)."""
    fig = _figure(7.5, 4.5)
    ax = fig.add_subplot()
    done = trials[trials["state"] == "COMPLETE"].dropna(subset=[metric]) if metric in trials else trials.iloc[0:0]
    if not done.empty:
        ax.plot(done["trial"].astype(int), done[metric], "o", color="tab:blue", label=metric)
        run_best = done[metric].cummax() if direction == "maximize" else done[metric].cummin()
        ax.step(done["trial"].astype(int), run_best, where="post", color="tab:red", label="best so far")
        if "test_accuracy" in done:
            ax.plot(done["trial"].astype(int), done["test_accuracy"], ".", color="grey", alpha=0.7, label="test accuracy (not used to select)")
        enq = done[done["enqueued"]]
        ax.scatter(enq["trial"].astype(int), enq[metric], marker="s", s=120, facecolors="none", edgecolors="black", label="enqueued default")
    other = trials[trials["state"] != "COMPLETE"]
    for _, r in other.iterrows():
        ax.axvline(int(r["trial"]), color="lightgrey", lw=1, zorder=0)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(metric)
    ax.set_title("trials in order" + (f" (grey lines: {len(other)} pruned or failed)" if len(other) else ""))
    ax.legend(loc="best", fontsize=8)
    return fig


def plot_finalized(final: pd.DataFrame, final_runs: pd.DataFrame | None = None):
    """Test accuracy of the finalized configurations: mean ± std over seeds, and each seed."""
    fig = _figure(6, 4)
    ax = fig.add_subplot()
    if final.empty:
        ax.text(0.5, 0.5, "not finalized yet:\nresearch study finalize NAME --seeds 3", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    xs = np.arange(len(final))
    ax.errorbar(xs, final["test_accuracy_mean"], yerr=final["test_accuracy_std"].fillna(0), fmt="o", capsize=8, ms=9, color="tab:blue",
                label="mean ± std over seeds")
    if final_runs is not None and not final_runs.empty and "test_accuracy" in final_runs:
        for i, c in enumerate(final["config"]):
            accs = final_runs.loc[final_runs["config"] == c, "test_accuracy"].dropna()
            ax.plot(np.full(len(accs), i + 0.12), accs, ".", color="grey", label="one seed" if i == 0 else None)
    for i, r in final.iterrows():
        ax.annotate(f"{100 * r['test_accuracy_mean']:.2f} ± {100 * (r['test_accuracy_std'] or 0):.2f} %", (i, r["test_accuracy_mean"]),
                    xytext=(14, 0), textcoords="offset points", va="center", fontsize=9)
    ax.set_xticks(xs, [f"{c}\n(trial {t})" for c, t in zip(final["config"], final["trial"])])
    ax.set_xlim(-0.6, len(final) - 0.2)
    ax.set_ylabel("test accuracy")
    ax.set_title("finalized on train+val, evaluated on the test split")
    ax.legend(loc="best", fontsize=8)
    return fig


# ----------------------------------------------------------------------------- distillation vs compression


def comparison_runs(runs: pd.DataFrame, *, needs: Sequence[str] = ("test_accuracy",), by: str = "method",
                    exclude_roles: Sequence[str] = ("study", "comparison", "distill_base")) -> pd.DataFrame:
    """Finished runs that carry a ``by`` tag (``method``: teacher, student, distill,
    prune, int8, lowrank, distill+prune, ...) and the ``needs`` metrics: the points of
    the comparison charts. Parent runs and the uncompressed students that
    ``distill+<compression>`` starts from (role distill_base) are left out."""
    if by not in runs:
        return runs.iloc[0:0]
    r = runs[(runs["status"] == "FINISHED") & runs[by].notna()]
    if "role" in r:
        r = r[~r["role"].isin(list(exclude_roles))]
    r = r.dropna(subset=[m for m in needs if m in r])
    if any(m not in r for m in needs):
        return r.iloc[0:0]
    return _drop_empty(r).reset_index(drop=True)


def pareto_mask(x: Sequence[float], y: Sequence[float], *, lower_x: bool = True, higher_y: bool = True) -> np.ndarray:
    """True for the points no other point beats on both axes (ties kept)."""
    xs = np.asarray(x, dtype=float) * (1 if lower_x else -1)
    ys = np.asarray(y, dtype=float) * (1 if higher_y else -1)
    keep = np.ones(len(xs), dtype=bool)
    for i in range(len(xs)):
        better = (xs <= xs[i]) & (ys >= ys[i]) & ((xs < xs[i]) | (ys > ys[i]))
        keep[i] = not better.any()
    return keep


def pareto_front(frame: pd.DataFrame, x: str, y: str = "test_accuracy", *, by: str | None = "method",
                 lower_x: bool = True, higher_y: bool = True) -> pd.DataFrame:
    """The non-dominated runs (smaller ``x``, larger ``y``), per ``by`` group, sorted by ``x``."""
    f = frame.dropna(subset=[x, y])
    groups = f.groupby(by, sort=False) if by else [(None, f)]
    parts = [g[pareto_mask(g[x], g[y], lower_x=lower_x, higher_y=higher_y)] for _, g in groups]
    return pd.concat(parts).sort_values([by, x] if by else [x]) if parts else f.iloc[0:0]


def _method_order(frame: pd.DataFrame, by: str) -> list[str]:
    known = ["teacher", "student", "distill", "finetune"]
    methods = list(dict.fromkeys(frame[by].astype(str)))
    return sorted(methods, key=lambda m: (known.index(m) if m in known else len(known), m))


def plot_pareto(frame: pd.DataFrame, x: str = "size_bytes", y: str = "test_accuracy", *, by: str = "method", logx: bool = True,
                lower_x: bool = True, title: str | None = None):
    """Accuracy against a cost, one series per method: every run as a faint point, each
    method's Pareto front as a line, and the front over all methods dashed."""
    fig = _figure(8, 5.5)
    ax = fig.add_subplot()
    f = frame.dropna(subset=[x, y]) if {x, y} <= set(frame.columns) else frame.iloc[0:0]
    if f.empty:
        ax.text(0.5, 0.5, f"no finished run with both {x} and {y}", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    markers = "osD^vP*Xhp<>"
    for i, m in enumerate(_method_order(f, by)):
        g = f[f[by].astype(str) == m]
        color = f"C{i % 10}"
        ax.scatter(g[x], g[y], color=color, alpha=0.35, s=28, marker=markers[i % len(markers)])
        front = g[pareto_mask(g[x], g[y], lower_x=lower_x)].sort_values(x)
        ax.plot(front[x], front[y], marker=markers[i % len(markers)], color=color, ms=7, lw=1.5, drawstyle="steps-post" if len(front) > 1 else "default",
                label=f"{m} ({len(g)} run{'s' if len(g) != 1 else ''})")
    overall = f[pareto_mask(f[x], f[y], lower_x=lower_x)].sort_values(x)
    if len(overall) > 1:
        ax.plot(overall[x], overall[y], ls="--", color="black", lw=0.8, alpha=0.6, drawstyle="steps-post", label="front over all methods")
    if logx and (f[x] > 0).all() and f[x].max() / f[x].min() >= 10:  # a log axis only where it spans a decade
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        few_decades = np.log10(f[x].max() / f[x].min()) < 1.5
        ax.xaxis.set_minor_formatter(plain if few_decades else NullFormatter())
        ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel(_axis_label(x))
    ax.set_ylabel(_axis_label(y))
    ax.set_title(title or f"{_axis_label(y)} against {_axis_label(x)}: Pareto front per method")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


def _axis_label(metric: str) -> str:
    return {"size_bytes": "size on disk (bytes)", "latency_b1_ms": "CPU latency, batch 1 (ms)", "latency_b256_ms": "CPU latency, batch 256 (ms)",
            "params": "parameters", "params_nonzero": "non-zero parameters", "test_accuracy": "test accuracy", "val_accuracy": "validation accuracy",
            "flops": "FLOPs"}.get(metric, metric)


def comparison_table(frame: pd.DataFrame, *, by: str = "method", y: str = "test_accuracy",
                     costs: Sequence[str] = ("size_bytes", "latency_b1_ms")) -> pd.DataFrame:
    """One row per run: method, run, model, the accuracy and cost metrics, and whether
    the run is on its method's Pareto front for each cost; best accuracy first."""
    cols = [by, "budget", "run_name", "role", "model", "seed", *[m for m in PARETO_METRICS if m in frame], "run_id"]
    t = frame[[c for c in dict.fromkeys(cols) if c in frame]].copy()
    for cost in costs:
        if cost in t and y in t:
            t[f"front_{cost}"] = False
            for _, g in t.dropna(subset=[cost, y]).groupby(by):
                t.loc[g.index, f"front_{cost}"] = pareto_mask(g[cost], g[y])
    return t.sort_values([y], ascending=False).reset_index(drop=True)


def method_summary(frame: pd.DataFrame, *, by: str = "method", y: str = "test_accuracy") -> pd.DataFrame:
    """One row per method: runs, best and mean ± std accuracy, smallest size, fastest latency, fewest parameters."""
    rows = []
    for m in _method_order(frame, by):
        g = frame[frame[by].astype(str) == m]
        row: dict[str, Any] = {by: m, "runs": len(g)}
        if y in g:
            row.update({f"best {y}": g[y].max(), f"mean {y}": g[y].mean(), f"std {y}": g[y].std(ddof=1) if len(g) > 1 else 0.0})
        for cost, agg in (("size_bytes", "min"), ("params", "min"), ("params_nonzero", "min"), ("latency_b1_ms", "min"), ("latency_b256_ms", "min")):
            if cost in g:
                row[f"{agg} {cost}"] = g[cost].agg(agg)
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- several teachers


def teachers_of(runs: pd.DataFrame, trials: pd.DataFrame | None = None, tracking_uri: str | None = None) -> pd.DataFrame:
    """The teachers of a study in weight order (``teacher`` 0..K-1): their own runs (tag
    role=teacher) with test accuracy, model and a short ``label``. The order is the trials'
    ``teacher_run_id`` tag; a teacher logged in another experiment is fetched by its id."""
    teachers = _with_role(runs, "teacher")
    ids: list[str] = []
    if trials is not None and "teacher_run_id" in trials:
        tagged = trials["teacher_run_id"].dropna()
        if not tagged.empty:
            ids = [i for i in str(tagged.iloc[0]).split(",") if i]
    if not ids:  # no trial yet: the run names say the index (teacher-<k>-<model>)
        order = teachers.assign(_k=teachers["run_name"].str.extract(r"teacher-(\d+)", expand=False).astype(float)).sort_values(["_k", "start_time"])
        ids = list(dict.fromkeys(order.drop_duplicates("_k", keep="last")["run_id"]))
    rows = []
    by_id = teachers.set_index("run_id") if not teachers.empty else None
    for k, run_id in enumerate(ids):
        if by_id is not None and run_id in by_id.index:
            row = by_id.loc[run_id].to_dict()
        else:
            row = _fetch_run(run_id, tracking_uri)
        row.update(run_id=run_id, teacher=k)
        rows.append(row)
    t = _drop_empty(pd.DataFrame(rows))
    if t.empty:
        return t
    model = t["model"] if "model" in t else pd.Series(["?"] * len(t))
    acc = t["test_accuracy"] if "test_accuracy" in t else pd.Series([np.nan] * len(t))
    t["label"] = [f"T{k}: {m}" + (f" ({a:.3f})" if pd.notna(a) else "") for k, m, a in zip(t["teacher"], model, acc)]
    first = [c for c in ("teacher", "label", "model", "test_accuracy", "val_accuracy", "params", "seed", "run_name", "run_id") if c in t]
    return t[first + [c for c in t.columns if c not in first]]


def _fetch_run(run_id: str, tracking_uri: str | None) -> dict[str, Any]:
    try:
        run = _tracker(tracking_uri).get_run(run_id)
    except Exception:  # deleted, or in another store
        return {}
    raw = {**{f"metrics.{k}": v for k, v in run.data.metrics.items()}, **{f"params.{k}": v for k, v in run.data.params.items()},
           **{f"tags.{k}": v for k, v in run.data.tags.items()}, "run_id": run_id, "status": run.info.status}
    return clean_runs(pd.DataFrame([raw])).iloc[0].to_dict()


def dominant_teacher(trials: pd.DataFrame, dominance: float = 0.5) -> pd.Series:
    """The teacher whose weight is at least ``dominance`` in each trial (<NA> when none is)."""
    w = trials[[c for c in trials.columns if str(c).startswith("weight_")]]
    if w.empty:
        return pd.Series(pd.NA, index=trials.index, dtype="Int64")
    top = w.to_numpy(dtype=float)
    k = np.nanargmax(np.nan_to_num(top, nan=-1), axis=1)
    ok = np.take_along_axis(np.nan_to_num(top, nan=-1), k[:, None], axis=1)[:, 0] >= dominance
    return pd.Series(np.where(ok, k, -1), index=trials.index).replace(-1, pd.NA).astype("Int64")


def single_teacher_comparison(trials: pd.DataFrame, teachers: pd.DataFrame, *, objective: str = "val_accuracy",
                              metric: str = "test_accuracy", dominance: float = 0.5) -> pd.DataFrame:
    """Each teacher alone (its own run's test accuracy) against the students distilled
    mostly from it (trials where its weight is at least ``dominance``: their count and the
    best by ``objective``), then the best mixture and the uniform enqueued default."""
    done = trials[trials["state"] == "COMPLETE"].copy()
    done["dominant"] = dominant_teacher(done, dominance)
    rows = []
    for _, t in teachers.iterrows():
        mine = done[done["dominant"] == t["teacher"]]
        best = best_trial(mine, objective) if not mine.empty else None
        rows.append({"row": t.get("label", f"T{t['teacher']}"), "teacher test_accuracy": t.get("test_accuracy"), "trials": len(mine),
                     "best trial": None if best is None else int(best["trial"]), objective: None if best is None else best[objective],
                     metric: None if best is None else best.get(metric),
                     "weights": None if best is None else _weights_text(best)})
    overall = best_trial(done, objective)
    if overall is not None:
        rows.append({"row": "best mixture", "trials": len(done), "best trial": int(overall["trial"]), objective: overall[objective],
                     metric: overall.get(metric), "weights": _weights_text(overall)})
    uniform = done[done["enqueued"]]
    if not uniform.empty:
        u = uniform.iloc[0]
        rows.append({"row": "enqueued default", "trials": 1, "best trial": int(u["trial"]), objective: u[objective], metric: u.get(metric),
                     "weights": _weights_text(u)})
    return pd.DataFrame(rows)


def _weights_text(row: pd.Series) -> str:
    w = [row[c] for c in row.index if str(c).startswith("weight_")]
    return "[" + ", ".join(f"{float(v):.2f}" for v in w) + "]"


def _simplex_xy(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Barycentric -> Cartesian: corners T0 (0, 0), T1 (1, 0), T2 (1/2, sqrt(3)/2)."""
    return w[:, 1] + 0.5 * w[:, 2], (np.sqrt(3) / 2) * w[:, 2]


def plot_weight_simplex(trials: pd.DataFrame, metric: str = "val_accuracy", teachers: pd.DataFrame | None = None, direction: str = "maximize"):
    """Three teachers: each trial as a point on the weight triangle (a corner = that
    teacher alone, the centre = uniform), coloured by the metric; best starred, enqueued boxed."""
    from matplotlib.tri import Triangulation

    wcols = [c for c in trials.columns if str(c).startswith("weight_")]
    if len(wcols) != 3:
        raise ValueError(f"a simplex view needs three teachers' weights, these trials have {len(wcols)}; use plot_teacher_weights")
    fig = _figure(7, 6.2)
    ax = fig.add_subplot()
    done = trials[trials["state"] == "COMPLETE"].dropna(subset=[*wcols, metric])
    w = done[wcols].to_numpy(dtype=float)
    x, y = _simplex_xy(w)
    z = done[metric].to_numpy(dtype=float)
    corners = np.array([[0, 0], [1, 0], [0.5, np.sqrt(3) / 2], [0, 0]])
    ax.plot(corners[:, 0], corners[:, 1], color="black", lw=1)
    for frac in (0.25, 0.5, 0.75):  # grid lines of constant weight
        for k in range(3):
            a = np.zeros((2, 3))
            a[:, k] = frac
            others = [j for j in range(3) if j != k]
            a[0, others[0]], a[1, others[1]] = 1 - frac, 1 - frac
            gx, gy = _simplex_xy(a)
            ax.plot(gx, gy, color="lightgrey", lw=0.6, zorder=0)
    vmin, vmax = (float(z.min()), float(z.max())) if len(z) else (0, 1)
    if len(done) >= 6:  # fewer points make slivers, not a map
        try:
            ax.tricontourf(Triangulation(x, y), z, levels=12, cmap="viridis", alpha=0.35, vmin=vmin, vmax=vmax)
        except (ValueError, RuntimeError):
            pass
    sc = ax.scatter(x, y, c=z, cmap="viridis", vmin=vmin, vmax=vmax, s=60, edgecolors="white", linewidths=0.8, zorder=3)
    fig.colorbar(sc, ax=ax, label=metric, shrink=0.8)
    enq = done["enqueued"].to_numpy(dtype=bool)
    if enq.any():
        ax.scatter(x[enq], y[enq], marker="s", s=150, facecolors="none", edgecolors="black", linewidths=1.2, label="enqueued default", zorder=4)
    best = best_trial(done, metric, direction)
    if best is not None:
        bx, by = _simplex_xy(np.array([[float(best[c]) for c in wcols]]))
        ax.scatter(bx, by, marker="*", s=320, color="red", edgecolors="black", zorder=5,
                   label=f"best: trial {int(best['trial'])} ({float(best[metric]):.4f}) {_weights_text(best)}")
    names = list(teachers["label"]) if teachers is not None and "label" in teachers and len(teachers) == 3 else [f"T{k}" for k in range(3)]
    for (cx, cy), name, (dx, dy, ha) in zip(corners[:3], names, ((-0.02, -0.06, "left"), (0.02, -0.06, "right"), (0, 0.03, "center"))):
        ax.text(cx + dx, cy + dy, name, ha=ha, fontsize=9, weight="bold")
    ax.set_xlim(-0.08, 1.08)
    ax.set_ylim(-0.12, 0.98)
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(f"{metric} over the teachers' weights\n(a corner: that teacher alone; the centre: uniform)")
    if ax.get_legend_handles_labels()[0]:
        fig.legend(loc="outside lower center", fontsize=8, ncols=1)
    return fig


def plot_teacher_weights(trials: pd.DataFrame, metric: str = "val_accuracy", teachers: pd.DataFrame | None = None):
    """Any number of teachers: the metric against each teacher's weight (one panel each).
    Three teachers get the simplex view (``plot_weight_simplex``)."""
    wcols = [c for c in trials.columns if str(c).startswith("weight_")]
    if len(wcols) == 3:
        return plot_weight_simplex(trials, metric, teachers)
    fig = _figure(4 * max(1, len(wcols)), 4)
    done = trials[trials["state"] == "COMPLETE"]
    axes = fig.subplots(1, max(1, len(wcols)), squeeze=False)[0]
    for k, (ax, c) in enumerate(zip(axes, wcols)):
        ax.scatter(done[c], done[metric], c=done[metric], cmap="viridis")
        name = teachers["label"].iloc[k] if teachers is not None and "label" in teachers and k < len(teachers) else f"T{k}"
        ax.set_xlabel(f"weight of {name}")
        ax.set_ylabel(metric)
    if not wcols:
        axes[0].text(0.5, 0.5, "no teacher weights were searched", ha="center", va="center", transform=axes[0].transAxes)
        axes[0].set_axis_off()
    return fig


def plot_vs_single_teacher(trials: pd.DataFrame, teachers: pd.DataFrame, *, metric: str = "test_accuracy", dominance: float = 0.5):
    """Per teacher: its own accuracy (bar) and the students distilled mostly from it
    (points: trials where its weight >= ``dominance``); lines: the best mixture (by
    validation accuracy) and the uniform enqueued default."""
    fig = _figure(7.5, 5.2)
    ax = fig.add_subplot()
    done = trials[trials["state"] == "COMPLETE"].copy()
    done["dominant"] = dominant_teacher(done, dominance)
    xs = np.arange(len(teachers))
    own = teachers["test_accuracy"].astype(float) if "test_accuracy" in teachers else pd.Series(np.nan, index=teachers.index)
    ax.bar(xs, own, width=0.55, color="lightsteelblue", edgecolor="steelblue", label="teacher alone (its own run)")
    rng = np.random.default_rng(0)
    counts: list[int] = []
    for i, k in enumerate(teachers["teacher"]):
        mine = done.loc[done["dominant"] == k, metric].dropna() if metric in done else pd.Series(dtype=float)
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(mine)), mine, color="tab:orange", edgecolors="black", zorder=3,
                   label=f"student, weight >= {dominance:g} on that teacher" if i == 0 else None)
        counts.append(len(mine))
    best = best_trial(done)
    if best is not None and metric in best:
        ax.axhline(float(best[metric]), color="tab:red", lw=1.5, label=f"best mixture, trial {int(best['trial'])} {_weights_text(best)}")
    uniform = done[done["enqueued"]]
    if not uniform.empty and metric in uniform:
        ax.axhline(float(uniform[metric].iloc[0]), color="black", ls="--", lw=1, label="uniform weights (enqueued)")
    labels = teachers["label"] if "label" in teachers else [f"T{k}" for k in teachers["teacher"]]
    ax.set_xticks(xs, [f"{name}\n{n} trial{'s' if n != 1 else ''} >= {dominance:g}" for name, n in zip(labels, counts)], fontsize=8)
    ax.set_ylabel(metric)
    ax.set_title("mixing teachers against a single teacher")
    fig.legend(loc="outside lower center", fontsize=8, ncols=2)
    return fig


# ----------------------------------------------------------------------------- for `research study report`


def study_run_figures(experiment: str, tracking_uri: str | None = None, *, objective: str = "val_accuracy",
                      direction: str = "maximize") -> dict[str, Any]:
    """The notebooks' study figures, from MLflow, for ``research study report``:
    trials in order, the T x alpha map, the finalized test accuracy, and for several
    teachers the weight view and the single-teacher comparison (each only when it applies)."""
    runs = runs_frame(experiment, tracking_uri)
    trials = trials_of(runs)
    figs: dict[str, Any] = {}
    if trials.empty:
        return figs
    figs["trials_history"] = plot_trial_history(trials, objective, direction)
    if {"temperature", "alpha"} <= set(trials.columns):
        figs["trials_temperature_alpha"] = plot_temperature_alpha(trials, objective, direction)
    final = finalized(study_run_of(runs), final_runs_of(runs))
    if not final.empty:
        figs["finalized_test_accuracy"] = plot_finalized(final, final_runs_of(runs))
    if any(str(c).startswith("weight_") for c in trials.columns):
        teachers = teachers_of(runs, trials, tracking_uri)
        figs["teacher_weights"] = plot_teacher_weights(trials, objective, teachers)
        if not teachers.empty:
            figs["vs_single_teacher"] = plot_vs_single_teacher(trials, teachers)
    return figs


# ----------------------------------------------------------------------------- research compare (rows of mean ± std)


def comparison_rows(results: list[dict[str, Any]], teacher_params: int) -> list[dict[str, Any]]:
    """One row per (method, budget): mean and std over seeds of the metrics that matter."""
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["method"], r["budget"]), []).append(r)
    rows = []
    for (method, budget), group in groups.items():
        row: dict[str, Any] = {"method": method, "budget": budget, "runs": len(group)}
        for key in ("test_accuracy", "val_accuracy", "params", "params_nonzero", "size_bytes", "latency_b1_ms", "latency_b256_ms", "flops"):
            vals = [g[key] for g in group if key in g]
            if vals:
                row[key] = statistics.fmean(vals)
                row[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        nz = row.get("params_nonzero", row.get("params"))
        row["reduction"] = teacher_params / nz if nz else None
        rows.append(row)
    return sorted(rows, key=lambda r: (r["budget"] or 0, r["method"]))


def comparison_markdown(name: str, rows: list[dict[str, Any]], *, teacher_params: int, seeds: list[int], figure_files=()) -> str:
    shown = []
    for r in rows:
        shown.append({
            "method": r["method"], "budget": "-" if r["budget"] is None else f"{r['budget']:g}x",
            "test accuracy": f"{100 * r['test_accuracy']:.2f} ± {100 * r.get('test_accuracy_std', 0):.2f}",
            "non-zero params": f"{r.get('params_nonzero', r.get('params', 0)):,.0f}",
            "reduction": "-" if r["reduction"] is None else f"{r['reduction']:.1f}x",
            "bytes": f"{r.get('size_bytes', 0):,.0f}",
            "latency b1 ms": f"{r.get('latency_b1_ms', float('nan')):.3f}",
            "latency b256 ms": f"{r.get('latency_b256_ms', float('nan')):.2f}",
        })
    cols = [(k, k) for k in ("method", "budget", "test accuracy", "non-zero params", "reduction", "bytes", "latency b1 ms", "latency b256 ms")]
    lines = [f"# Comparison `{name}`", "",
             f"Teacher: {teacher_params:,} parameters. Budgets are x fewer parameters than the teacher; test accuracy in %, "
             f"mean ± std over seeds {seeds} (the teacher row: its own run). Latency: CPU, 1 thread, median.", "",
             markdown_table(shown, cols), ""]
    lines += [f"![{Path(f).stem}]({Path(f).name})" for f in figure_files]
    return "\n".join(lines) + "\n"


def comparison_figures(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Pareto charts of `research compare`: mean test accuracy (± std over seeds) against
    bytes on disk and against latency, one series per method."""
    from matplotlib import colormaps

    colors = colormaps["tab20"].colors
    figs = {}
    for key, label, fname in (("size_bytes", "bytes of the saved model", "pareto_accuracy_vs_size"),
                              ("latency_b1_ms", "CPU latency at batch 1 (ms)", "pareto_accuracy_vs_latency")):
        fig = _figure(8, 5.5)
        ax = fig.add_subplot()
        pts = [r for r in rows if key in r]
        for i, method in enumerate(dict.fromkeys(r["method"] for r in pts)):
            series = sorted((r for r in pts if r["method"] == method), key=lambda r: r[key])
            xs, ys = [r[key] for r in series], [100 * r["test_accuracy"] for r in series]
            errs = [100 * r.get("test_accuracy_std", 0) for r in series]
            ax.errorbar(xs, ys, yerr=errs, marker="*" if method == "teacher" else "osD^v<>p"[i % 8], markersize=14 if method == "teacher" else 7,
                        capsize=3, label=method, color=colors[(2 * i) % 20 + (i // 10) % 2], linestyle="-" if len(series) > 1 else "none")
        xs, ys = [r[key] for r in pts], [100 * r["test_accuracy"] for r in pts]
        front = sorted((x, y) for x, y, keep in zip(xs, ys, pareto_mask(xs, ys)) if keep)
        if len(front) > 1:
            ax.plot(*zip(*front), color="black", alpha=0.25, linewidth=6, zorder=0, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        figs[fname] = fig
    return figs


# ----------------------------------------------------------------------------- adaptive temperature and weighting


def adaptive_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The table of an adaptive comparison (``research.adaptive``) rebuilt from its tracked runs.

    ``runs``: ``runs_frame`` of the comparison's experiment. The child runs carry a ``rows`` tag
    ("index:part:method|...", index: the row's place in the table; a run may count in several rows) and the parent run (role comparison) a
    ``baselines`` tag. Returns one row per (part, method), in the order the comparison made them:
    ``part``, ``method``, ``seeds``, ``test_mean``, ``test_sd`` (sample sd), ``val_mean``,
    ``is_baseline``, ``delta`` (test mean minus the part's baseline), in table order. Empty when there is none.
    """
    cols = ["part", "method", "seeds", "test_mean", "test_sd", "val_mean", "is_baseline", "delta"]
    if "rows" not in runs or "role" not in runs:
        return pd.DataFrame(columns=cols)
    parents = _with_role(runs, "comparison")
    parents = parents[parents["baselines"].notna()] if "baselines" in parents else parents.iloc[0:0]
    if parents.empty:
        return pd.DataFrame(columns=cols)
    parent = parents.sort_values("start_time").iloc[-1]  # the latest comparison
    children = runs[(runs.get("parent_run_id") == parent["run_id"]) & runs["rows"].notna()]
    children = children.sort_values("start_time")
    baselines = set(str(parent["baselines"]).split("|"))
    order: dict[tuple[int, str, str], list[pd.Series]] = {}
    for _, r in children.iterrows():
        for entry in str(r["rows"]).split("|"):
            index, part, method = entry.split(":", 2)
            order.setdefault((int(index), part, method), []).append(r)
    out = []
    for (_, part, method), rs in sorted(order.items(), key=lambda item: item[0][0]):
        name = f"{part}:{method}"
        test = [float(r["test_accuracy"]) for r in rs]
        out.append({"part": part, "method": method, "seeds": len(rs), "test_mean": float(np.mean(test)),
                    "test_sd": float(np.std(test, ddof=1)) if len(test) > 1 else 0.0,
                    "val_mean": float(np.mean([float(r["val_accuracy"]) for r in rs])), "is_baseline": name in baselines})
    table = pd.DataFrame(out, columns=cols[:-1])
    base = table[table["is_baseline"]].set_index("part")["test_mean"]
    table["delta"] = [None if b else t - base.get(p, np.nan) for p, t, b in zip(table["part"], table["test_mean"], table["is_baseline"])]
    return table


def adaptive_comparison(experiment: str, tracking_uri: str | None = None) -> pd.DataFrame:
    """``adaptive_table`` of the latest adaptive comparison in ``experiment``; empty when the
    experiment does not exist or holds none (a notebook then says how to make one)."""
    try:
        runs = runs_frame(experiment, tracking_uri)
    except LookupError:
        return adaptive_table(pd.DataFrame())
    return adaptive_table(runs)


def plot_adaptive(table: pd.DataFrame):
    """One panel per part (temperature kinds; weightings): test accuracy mean ± sd per method, the
    part's baseline as a dashed line; green above it, red below, grey level with it.
    ``table``: ``part``, ``method``, ``test_mean``, ``test_sd``, ``is_baseline``, ``delta`` (as adaptive_table)."""
    parts = list(dict.fromkeys(table["part"])) if len(table) else []
    if not parts:
        fig = _figure()
        fig.add_subplot().text(0.5, 0.5, "no adaptive comparison", ha="center", va="center")
        return fig
    heights = [max(2.0, 0.45 * int((table["part"] == p).sum()) + 1.0) for p in parts]
    fig = _figure(9, sum(heights) + 0.5)
    axes = fig.subplots(len(parts), 1, gridspec_kw={"height_ratios": heights}, squeeze=False)[:, 0]
    for ax, part in zip(axes, parts):
        rs = table[table["part"] == part].iloc[::-1]
        ys = list(range(len(rs)))
        colors = ["#888888" if b or d is None or abs(d) < 5e-5 else ("#2a9d8f" if d > 0 else "#e76f51")
                  for b, d in zip(rs["is_baseline"], rs["delta"])]
        ax.barh(ys, 100 * rs["test_mean"], xerr=100 * rs["test_sd"], color=colors, capsize=3)
        ax.set_yticks(ys, list(rs["method"]), fontsize=8)
        lo, hi = float((100 * (rs["test_mean"] - rs["test_sd"])).min()), float((100 * (rs["test_mean"] + rs["test_sd"])).max())
        ax.set_xlim(lo - 0.3 * (hi - lo) - 0.5, hi + 0.1 * (hi - lo) + 0.5)
        base = rs[rs["is_baseline"]]
        if len(base):
            ax.axvline(100 * float(base["test_mean"].iloc[0]), color="black", linestyle="--", linewidth=1,
                       label=f"baseline: {base['method'].iloc[0]}")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_title({"temperature": "temperature kinds (one teacher)", "teachers": "teacher weightings and combination rules"}.get(part, part),
                     fontsize=10)
        ax.set_xlabel("test accuracy (%), mean ± sd over seeds")
        ax.grid(True, axis="x", alpha=0.3)
    return fig
