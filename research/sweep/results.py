"""After the trials: the best trials, the study's closing record on its parent run,
the final retraining with several seeds, and the studies and trials as plain rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import StudyConfig
from ..distill import TeacherLogitCache
from ..pipeline import RunContext, load_run_data, obtain_teachers, train_student
from ..stats import best_first, mean_std, paired_t_ci, state_counts
from ..tasks import build_task
from ..tracking import Tracker
from .objective import trial_config, trial_values
from .plots import close_figures, study_figures
from .storage import ATTR_EXPERIMENT, ATTR_PARENT, ATTR_TRACKING_URI, StudyError, count_finished, open_storage


def best_trials(study: optuna.Study, k: int = 1) -> list[FrozenTrial]:
    """The best ``k`` completed trials, best first.

    One objective: by its value, the lowest trial number on a tie. Several: the
    Pareto front first (Optuna's ``study.best_trials``), then the dominated
    trials, each group by the first objective. Ordering by the first objective
    alone could put first a dominated trial that ties on it with a front member."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    front = {t.number for t in study.best_trials} if len(study.directions) > 1 and done else set()
    return best_first(done, value=lambda t: t.values[0], number=lambda t: t.number, direction=study.directions[0], preferred=front)[:k]


def enqueued_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials that ran an ``enqueue:`` entry (published defaults), in trial order."""
    return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("enqueued")]


def finish_study(ctx_tracker: Tracker, study: optuna.Study, cfg: StudyConfig, *, plots_dir: Path | None = None) -> dict[str, Any]:
    """Best parameters and metrics, kept models and the study plots on the parent run,
    which then ends FINISHED. Returns {"n_finished": int, "best_trial": int (when one completed)}."""
    from ..models import build_model
    from ..report import figures_to_files

    tracker = ctx_tracker
    parent_id = study.user_attrs[ATTR_PARENT]
    parent = tracker.handle(parent_id)
    best = best_trials(study, max(1, cfg.keep_models))
    summary: dict[str, Any] = {"n_finished": count_finished(study)}
    counts = state_counts(t.state for t in study.get_trials(deepcopy=False))
    parent.log_metrics({f"trials_{k.lower()}": counts[k] for k in ("COMPLETE", "PRUNED", "FAIL")})
    if best:
        top = best[0]
        summary["best_trial"] = top.number
        parent.log_metrics({"best_trial": top.number, **{f"best_{o.metric}": v for o, v in zip(cfg.objectives, top.values)}})
        parent.set_tags({"best_trial": top.number, "best_run_id": top.user_attrs.get("mlflow_run_id"),
                         **{f"best.{k}": v for k, v in top.params.items()},
                         **({"best.teacher_weights": top.user_attrs["teacher_weights"]} if "teacher_weights" in top.user_attrs else {})})
        # The best few students become MLflow models (the rest keep their weights).
        data_shape = None
        for t in best[: cfg.keep_models]:
            run_id = t.user_attrs.get("mlflow_run_id")
            if not run_id or tracker.has_artifact(run_id, "model") or not tracker.has_artifact(run_id, "weights.pt"):
                continue  # already a model (compression trials log theirs), or nothing to rebuild from
            if data_shape is None:
                data = load_run_data(cfg, progress=False)
                data_shape = (data.input_shape, data.num_classes, data.test.x[:2])
            student = trial_config(cfg, trial_values(t, cfg)).student  # the trial may have searched its size
            model = build_model(student.name, input_shape=data_shape[0], num_classes=data_shape[1], **student.args)
            model.load_state_dict(tracker.load_state_dict(run_id))
            tracker.handle(run_id).log_model(model, input_example=data_shape[2])
            tracker.client.set_tag(run_id, "kept_model", "true")
    figures = study_figures(study, cfg)
    for name, fig in figures.items():
        parent.log_figure(fig, f"plots/{name}.png")
    if plots_dir is not None:
        figures_to_files(figures, plots_dir)
    close_figures(figures)
    tracker.end(parent, "FINISHED")
    return summary


def final_metric(cfg: StudyConfig) -> str:
    """The test metric ``finalize`` reports: the task's validation metric on the test split."""
    return f"test_{build_task(cfg.task).validation_metric}"


def finalize(study: optuna.Study, cfg: StudyConfig, *, seeds: Sequence[int], include_default: bool = True,
             progress: bool = True) -> dict[str, dict[str, float]]:
    """Retrain the best configuration (and the first enqueued default) on the whole
    training split with several seeds; test mean and spread go to the parent run.

    Returns {"best" | "default": {"<m>_mean", "<m>_std" (sample std, 0 for one seed),
    "seeds", "trial"}} with <m> = final_metric(cfg), e.g. test_accuracy, and "paired":
    best and default ran on the same seeds, so their per-seed difference best - default
    (``stats.paired_t_ci``: Student's t 95 % interval of its mean) is {"diff_mean",
    "seeds", "default_is_best" (0.0), and with >= 2 seeds "diff_ci_low", "diff_ci_high", "excludes_zero" (1.0 or
    0.0)}; or {"default_is_best": 1.0} when the best trial is the enqueued default itself
    (nothing to compare). The same go to the parent run as ``final_paired_*`` metrics.
    No "paired" without a completed default (or with ``include_default=False``). Raises
    StudyError when no trial completed."""
    tracker = Tracker(study.user_attrs.get(ATTR_TRACKING_URI) or cfg.tracking.uri)
    best = best_trials(study, 1)
    if not best:
        raise StudyError(f"study {study.study_name!r} has no completed trial to finalize")
    candidates = {"best": best[0]}
    defaults = [t for t in enqueued_trials(study) if t.state == TrialState.COMPLETE]
    if include_default and defaults and defaults[0].number != best[0].number:
        candidates["default"] = defaults[0]
    data = load_run_data(cfg, progress=progress)
    teachers = obtain_teachers(cfg, data, tracker, progress=progress)
    parent_id = study.user_attrs[ATTR_PARENT]
    cache = TeacherLogitCache(Path(cfg.data.cache_dir) / "teacher_logits")
    metric = final_metric(cfg)
    out: dict[str, dict[str, float]] = {}
    per_seed: dict[str, list[float]] = {}
    for label, trial in candidates.items():
        tcfg = trial_config(cfg, trial_values(trial, cfg))
        scores = []
        for seed in seeds:
            run_ctx = RunContext(tracker, role=f"final_{label}", run_name=f"final-{label}-seed{seed}", parent_run_id=parent_id,
                                 extra_tags={"study": study.study_name, "from_trial": trial.number},
                                 extra_params={f"trial.{k}": v for k, v in trial.params.items()}, progress=progress, cache=cache)
            r = train_student(tcfg, data, run_ctx, seed=seed, teachers=teachers, full_train=True)
            scores.append(r.metrics[metric])
        mean, std = mean_std(scores)
        stats = {f"{metric}_mean": mean, f"{metric}_std": std, "seeds": float(len(scores)), "trial": float(trial.number)}
        out[label] = stats
        per_seed[label] = scores
        tracker.handle(parent_id).log_metrics({f"final_{label}_{k}": v for k, v in stats.items()})
    paired: dict[str, float] | None = None
    if "default" in per_seed:
        d = paired_t_ci(per_seed["best"], per_seed["default"])
        paired = {"diff_mean": d.mean, "seeds": float(d.n), "default_is_best": 0.0}  # 0.0: overrides an earlier finalize's 1.0
        if d.has_ci:
            paired |= {"diff_ci_low": d.low, "diff_ci_high": d.high, "excludes_zero": float(d.excludes_zero)}
    elif include_default and defaults and defaults[0].number == best[0].number:
        paired = {"default_is_best": 1.0}
    if paired is not None:
        out["paired"] = paired
        tracker.handle(parent_id).log_metrics({f"final_paired_{k}": v for k, v in paired.items()})
    return out


def list_studies(storage: str) -> list[dict[str, Any]]:
    """One row per study in ``storage``: name, trial counts by state, best first value,
    MLflow experiment, start time. Raises StudyError when the journal file does not exist."""
    store = open_storage(storage, create=False)
    rows = []
    for s in optuna.get_all_study_summaries(store, include_best_trial=True):
        study = optuna.load_study(study_name=s.study_name, storage=store)
        counts = state_counts(t.state for t in study.get_trials(deepcopy=False))
        best = s.best_trial.values[0] if s.best_trial is not None and s.best_trial.values else None
        rows.append({"name": s.study_name, "complete": counts["COMPLETE"], "pruned": counts["PRUNED"],
                     "failed": counts["FAIL"], "running": counts["RUNNING"], "best": best,
                     "experiment": s.user_attrs.get(ATTR_EXPERIMENT, ""), "started": s.datetime_start})
    return rows


def trials_table(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, values, params (as Optuna stores them), the
    normalised teacher weights, MLflow run, test metrics (``test_accuracy`` for
    classification; reported, never used to select), timing, and with repeats or folds the
    objectives' standard errors (``<metric>_se``)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        tests = {k: v for k, v in t.user_attrs.items() if k.startswith("test_") or k.endswith("_se")}  # _se: repeats or folds
        rows.append({"number": t.number, "state": t.state.name, "values": t.values, "params": dict(t.params),
                     "teacher_weights": t.user_attrs.get("teacher_weights"), "enqueued": bool(t.user_attrs.get("enqueued")),
                     "run_id": t.user_attrs.get("mlflow_run_id"), "test_accuracy": None, **tests,
                     "tracking_time_s": t.user_attrs.get("tracking_time_s"), "train_time_s": t.user_attrs.get("train_time_s"),
                     "duration_s": t.duration.total_seconds() if t.duration else None})
    return rows
