"""What the ``research study`` commands show: the summary after a run, the list of
studies, the finalize figures, and the study report (markdown and PNGs into a folder
and onto the parent run). Functions return text or paths; the CLI prints them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import StudyConfig
from ..stats import best_of, format_mean_std, format_state_counts, paired_sentence, state_counts
from ..tasks import build_task
from ..tracking import Tracker
from .plots import close_figures, study_figures
from .results import best_trials, final_metric, trials_table
from .storage import ATTR_EXPERIMENT, ATTR_PARENT, ATTR_TRACKING_URI
from .study import load_existing


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and v and all(isinstance(w, float) for w in v):
        return "[" + ", ".join(f"{w:.2f}" for w in v) + "]"
    return str(v)


def format_study_summary(cfg: StudyConfig, rows: list[dict[str, Any]], wall_s: float, *, best_trial: int | None = None) -> str:
    """Best trial against the enqueued defaults (validation metric; test shown, not used).
    ``rows``: trials_table's; ``best_trial``: the number best_trials chose (a multi-objective
    study's best is on its Pareto front); default: the best by the first objective. The
    searched values are shown as config values (the teachers' weights normalised)."""
    obj = cfg.objectives[0]
    encoder = cfg.search_encoder()
    test_key = final_metric(cfg)
    done = [r for r in rows if r["state"] == "COMPLETE"]
    lines = [f"\nstudy {cfg.name}: {len(rows)} trials ({format_state_counts(state_counts(r['state'] for r in rows))}) in {wall_s:.0f} s"]
    if not done:
        return "\n".join(lines + ["no completed trial"])
    best = best_of(done, value=lambda r: r["values"][0], number=lambda r: r["number"], direction=obj.direction,
                   preferred=() if best_trial is None else (best_trial,))
    table = [("best", best)] + [("enqueued default", r) for r in done if r["enqueued"]]
    for label, r in table:
        params = ", ".join(f"{k}={_fmt_value(v)}" for k, v in encoder.display(r["params"]).items())
        test = f", {test_key.replace('_', ' ', 1)} {r[test_key]:.4f}" if r.get(test_key) is not None else ""
        kind = "folds" if cfg.search.folds > 1 else "repeats"
        se = f" ± {r[obj.metric + '_se']:.4f} SE ({cfg.search.measurements} {kind})" if r.get(obj.metric + "_se") is not None else ""
        lines.append(f"  {label:<17} trial {r['number']:>3}: {obj.metric} {r['values'][0]:.4f}{se}{test}  ({params})")
    return "\n".join(lines)


def format_study_list(rows: list[dict[str, Any]]) -> str:
    """list_studies' rows as an aligned text table ("no studies" when empty)."""
    if not rows:
        return "no studies"
    header = ["study", "complete", "pruned", "failed", "running", "best", "experiment", "started"]
    body = [[r["name"], r["complete"], r["pruned"], r["failed"], r["running"], "-" if r["best"] is None else f"{r['best']:.4f}",
             r["experiment"], r["started"].strftime("%Y-%m-%d %H:%M") if r["started"] else "-"] for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in [header, *body])


def format_finalize(cfg: StudyConfig, out: dict[str, dict[str, float]]) -> str:
    """finalize's result, one line per configuration: mean ± std in % over the seeds; then
    one sentence on whether the search bought anything (``paired_sentence``)."""
    m = final_metric(cfg)
    lines = [
        f"{label:<8} (trial {int(s['trial'])}): {m.replace('_', ' ', 1)} {format_mean_std(s[f'{m}_mean'], s[f'{m}_std'], scale=100, unit=' %')} "
        f"over {int(s['seeds'])} seeds, trained on train+val"
        for label, s in out.items() if label != "paired"
    ]
    sentence = paired_sentence(out.get("paired"), direction=build_task(cfg.task).direction)
    return "\n".join(lines + ([sentence] if sentence else []))


@dataclass(frozen=True)
class StudyReport:
    """Where ``write_study_report`` put the report: the markdown, the plots, the parent run."""

    markdown: Path
    figures: list[Path]
    parent_run_id: str


def write_study_report(name: str, storage: str, out: str | Path) -> StudyReport:
    """The study's report.md and PNG plots (Optuna's and the trial runs' own) into ``out``,
    also logged to the study's parent run under ``report/``. Raises StudyError when there
    is no such study."""
    from .. import report

    study, cfg = load_existing(name, storage)
    tracker = Tracker(study.user_attrs.get(ATTR_TRACKING_URI) or cfg.tracking.uri)
    parent_id = study.user_attrs[ATTR_PARENT]
    out = Path(out)
    figures = study_figures(study, cfg)
    figures.update(report.study_run_figures(study.user_attrs.get(ATTR_EXPERIMENT, cfg.tracking.experiment), tracker.uri,
                                            objective=cfg.objectives[0].metric, direction=cfg.objectives[0].direction,
                                            test_metric=final_metric(cfg)))
    try:
        files = report.figures_to_files(figures, out)
    finally:
        close_figures(figures)  # pyplot keeps every figure open until closed
    md = report.study_markdown(
        name, trials_table(study), objective_names=[o.metric for o in cfg.objectives], directions=cfg.directions,
        parent_metrics=dict(tracker.get_run(parent_id).data.metrics), figure_files=files,
        settings={"sampler": cfg.sampler.name, "pruner": cfg.pruner.name, "searched": ", ".join(cfg.searched_names()),
                  "MLflow experiment": cfg.tracking.experiment, "parent run": parent_id,
                  **({"each trial": f"mean of {cfg.search.folds} folds" if cfg.search.folds > 1 else f"mean of {cfg.search.repeats} repeats"}
                     if cfg.search.measurements > 1 else {})},
        best_trial=next((t.number for t in best_trials(study, 1)), None), test_direction=build_task(cfg.task).direction, test_metric=final_metric(cfg),
    )
    (out / "report.md").write_text(md)
    handle = tracker.handle(parent_id)
    handle.log_text(md, "report/report.md")
    for f in files:
        handle.log_artifact(f, "report")
    return StudyReport(out / "report.md", files, parent_id)
