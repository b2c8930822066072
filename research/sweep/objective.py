"""One trial: its point (drawn through the search encoder), its config, its run, its values.

The trial's config is the study's with the drawn overrides applied
(:func:`trial_config`); a distillation trial trains a student
(``pipeline.train_student``), a compression trial runs the baseline
(``pipeline.compress_run``); either is one MLflow child run of the study's
parent run, whose status follows the trial (COMPLETE -> FINISHED, PRUNED ->
KILLED, FAIL -> FAILED). The returned values are the objectives' metrics, in
config order.

Pruning follows the task (``research.tasks``): each epoch reports the first
objective's metric when it is one of the task's per-epoch validation metrics,
else the task's validation metric, negated when its direction is the opposite
of the study's (Optuna's pruners read intermediate values in the study's
direction).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import optuna
import yaml
from optuna.trial import FrozenTrial

from ..config import StudyConfig, apply_overrides, parse
from ..config.study import SPEC_KEYS
from ..distill import TeacherLogitCache
from ..pipeline import RunContext, Teacher, compress_run, train_student
from ..tasks import Task, build_task
from ..tracking import Tracker
from .faults import heartbeat
from .storage import ATTR_LOST


@dataclass
class StudyContext:
    """What every trial of one process shares: config, data, teachers, tracking."""

    cfg: StudyConfig
    study: optuna.Study
    tracker: Tracker
    parent_run_id: str
    data: Any
    teachers: list[Teacher]
    cache: TeacherLogitCache
    progress: bool = False

    @property
    def multi_objective(self) -> bool:
        return len(self.cfg.objectives) > 1


def trial_config(cfg: StudyConfig, values: dict[str, Any]) -> StudyConfig:
    """The study's config with ``values`` ({dotted key: config value}, from the search
    encoder) applied as ``--set`` overrides would be, validated again (ConfigError).

    A kind's spec (``distill.temperature``, ``distill.weighting``; SPEC_KEYS) with a drawn
    ``<prefix>.kind`` starts afresh (the file's other kind's knobs would not fit); with only
    knobs drawn, the file's spec is kept, a number or null becoming its fixed spec."""
    raw = cfg.model_dump(mode="json")
    for prefix in SPEC_KEYS:
        if any(k.startswith(prefix + ".") for k in values):
            section, name = prefix.split(".")
            current = raw[section][name]
            raw[section][name] = ({} if f"{prefix}.kind" in values else dict(current) if isinstance(current, dict)
                                  else {"kind": "fixed", **({"value": current} if current is not None else {})})
    overrides = [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in values.items()]
    return parse(StudyConfig, apply_overrides(raw, overrides), source="trial")


def trial_values(trial: FrozenTrial, cfg: StudyConfig) -> dict[str, Any]:
    """The config overrides a stored trial stands for (see research.sweep.space)."""
    return cfg.search_encoder().decode(trial.params)


@dataclass(frozen=True)
class PruningTarget:
    """What each epoch reports to the pruner: ``metric`` (a key of the epoch's metrics,
    e.g. ``val_accuracy``) times ``sign`` (+1, or -1 when the metric improves in the
    direction opposite to the study's first objective)."""

    metric: str
    sign: float = 1.0


def pruning_target(cfg: StudyConfig, task: Task | None = None) -> PruningTarget:
    """The first objective when the task validates it every epoch, else the task's
    validation metric turned to the first objective's direction."""
    task = task or build_task(cfg.task)
    first = cfg.objectives[0]
    if first.metric in {f"val_{m}" for m in task.epoch_metric_names}:
        return PruningTarget(first.metric, 1.0)
    return PruningTarget(f"val_{task.validation_metric}", 1.0 if task.direction == first.direction else -1.0)


def _pruning_callback(trial: optuna.Trial, target: PruningTarget) -> Callable[[int, dict[str, float]], None]:
    """An epoch callback of the training loop: reports ``target`` at step ``epoch`` and
    raises optuna.TrialPruned when the pruner says so; epochs without the metric are skipped."""

    def report(epoch: int, metrics: dict[str, float]) -> None:
        if target.metric not in metrics:
            return
        value = metrics[target.metric]
        trial.report(target.sign * value, step=epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} ({target.metric} {value:.4f})")

    return report


def _objective_values(cfg: StudyConfig, metrics: dict[str, float]) -> float | tuple[float, ...]:
    """The objectives' metrics in config order (a float for one); KeyError when one is missing."""
    values = tuple(float(metrics[o.metric]) for o in cfg.objectives)
    return values[0] if len(values) == 1 else values


def make_objective(ctx: StudyContext) -> Callable[[optuna.Trial], float | tuple[float, ...]]:
    cfg = ctx.cfg
    encoder = cfg.search_encoder()
    task = build_task(cfg.task)
    target = pruning_target(cfg, task)

    def objective(trial: optuna.Trial):
        with heartbeat(trial):
            try:
                return run_trial(trial)
            except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: no result; see faults.py (enqueued again, not counted)
                trial.set_user_attr(ATTR_LOST, f"interrupted ({e or 'Ctrl-C'})")
                raise

    def run_trial(trial: optuna.Trial):
        values = encoder.suggest(trial)
        tcfg = trial_config(cfg, values)
        run_ctx = RunContext(
            ctx.tracker, role="trial", run_name=f"trial-{trial.number:03d}", parent_run_id=ctx.parent_run_id,
            extra_tags={"study": ctx.study.study_name, "trial_number": trial.number, "enqueued": bool(trial.user_attrs.get("enqueued"))},
            extra_params={f"trial.{k}": v for k, v in trial.params.items()}, killed_on=(optuna.TrialPruned,),
            on_run_start=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id), progress=ctx.progress, cache=ctx.cache,
        )
        if tcfg.compress is not None:  # a compression baseline's knobs are searched
            result = compress_run(tcfg, ctx.data, run_ctx, seed=cfg.seed, teachers=ctx.teachers)
            return _objective_values(cfg, result.metrics)
        callbacks = [] if ctx.multi_objective or cfg.pruner.name == "none" else [_pruning_callback(trial, target)]
        result = train_student(tcfg, ctx.data, run_ctx, seed=cfg.seed, teachers=ctx.teachers, callbacks=callbacks,
                               log_model=False, log_weights=True)  # the best few become MLflow models when the study ends
        for k in ("tracking_time_s", "train_time_s", f"test_{task.validation_metric}"):
            trial.set_user_attr(k, result.metrics.get(k))
        return _objective_values(cfg, result.metrics)

    return objective


def _mark_failed_run(tracker: Tracker):
    """Optuna callback: a trial that failed before its MLflow run ended is tagged there too."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            tracker.handle(run_id).set_tags({"optuna_state": trial.state.name})  # retried while the store is locked

    return callback
