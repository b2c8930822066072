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

Repeats and folds (``search.repeats`` R, ``search.folds`` K; :func:`measurements`):
the trial trains the student R times with seeds derived from the study's seed
(:func:`repeat_seed`; the first is the study's seed itself, so repeat 0 is the
run a plain trial makes) on the same split, or K times on the folds of train +
val (``research.data.kfold_indices``, fixed by the study's seed, so every trial
sees the same folds; all with the study's seed). The trial's MLflow run is then
a parent of one child run per repeat or fold (role ``trial_repeat`` or
``trial_fold``); it holds the mean of every metric over them (times summed:
``*_time_s`` are the trial's cost), each objective's per-measurement values
(``<metric>_per_repeat`` or ``_per_fold``, step = index), their standard error
(``<metric>_se``: sample std / sqrt(n)) and the first measurement's weights
(``weights.pt``, the student a kept model is rebuilt from). The trial's value is
the mean; the Optuna trial carries the same as user attributes.

Pruning with repeats or folds reports the running mean at a global step: epoch
``e`` (1-based) of measurement ``i`` reports, at step ``i * epochs + e``, the mean
of the finished measurements' final values and this measurement's value at
epoch ``e``. Measurement 0 reports exactly what a plain trial reports, so the
pruner may stop a bad trial in its first repeat as before; later steps compare
trials at the same point of their repeats (``pruner.n_warmup_steps`` counts
these steps).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import statistics
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import optuna
import torch
import yaml
from optuna.trial import FrozenTrial

from ..config import StudyConfig, apply_overrides, flatten, parse
from ..config.study import SPEC_KEYS
from ..data import DataBundle, kfold_indices
from ..distill import TeacherLogitCache
from ..pipeline import RunContext, RunResult, Teacher, compress_run, train_student
from ..runs import shared_tags, tracked_run
from ..stats import mean_se
from ..tasks import Task, build_task
from ..tracking import Tracker
from .faults import heartbeat
from .storage import ATTR_LOST, count_finished


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
    target: int | None = None  # finished trials the study should reach (None: no cap)

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


def check_search_values(cfg: StudyConfig, *, max_combinations: int = 256) -> None:
    """Refuse (ConfigError) a searched value no trial could use: each choice, and each range's
    low and high, applied to the study's config (:func:`trial_config`) must validate together
    with at least one combination of the other searched choices (a value may be valid only
    beside another: a beam's top_k). Without this, such trials failed one by one, each with a
    traceback, and the study still ended 0. Spaces with more than ``max_combinations``
    combinations of the other choices are checked against the file's values only."""
    from ..config import ConfigError
    from .space import Choice, Param

    params = [d for d in cfg.search_encoder().dims if isinstance(d, Param)]
    choices = {d.key: list(d.space.choices) for d in params if isinstance(d.space, Choice)}
    for dim in params:
        values = choices[dim.key] if dim.key in choices else [dim.space.low, dim.space.high]
        others = {k: v for k, v in choices.items() if k != dim.key}
        combos: list[dict[str, Any]] = [{}]
        if math.prod(len(v) for v in others.values()) <= max_combinations:
            for key, options in others.items():
                combos = [{**c, key: o} for c in combos for o in options]
        for value in values:
            first_error = None
            for combo in combos:
                try:
                    trial_config(cfg, {**combo, dim.key: value})
                    break
                except ConfigError as e:
                    first_error = first_error or e
            else:
                raise ConfigError(f"{dim.where}: {value!r} cannot be used by any trial: {first_error}")


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


class SurplusTrial(Exception):
    """A trial started after the study had its trials (another process filled them)."""


def _claim_place(ctx: StudyContext, trial: optuna.Trial) -> None:
    """Raise SurplusTrial (the trial then FAILs, marked lost: not counted) and stop this
    process's loop when the study's finished trials plus the others running already reach
    ``ctx.target``: two `resume`s at once, or machines joining one study, end with
    n_trials, not a multiple (at most one extra each when they check at the same moment)."""
    if ctx.target is None:
        return
    others = sum(t.number != trial.number for t in ctx.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)))
    finished = count_finished(ctx.study)
    if finished + others >= ctx.target:
        with contextlib.suppress(RuntimeError):  # outside optimize (a population round): its loop checks the target
            ctx.study.stop()
        reason = f"surplus: the study already had {finished} finished and {others} running trials of {ctx.target}"
        trial.set_user_attr(ATTR_LOST, reason)
        raise SurplusTrial(reason)


def stop_at_target(ctx: StudyContext) -> Callable[[optuna.Study, FrozenTrial], None]:
    """Optuna callback: stop this process's loop once the study has ``ctx.target`` finished trials."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if ctx.target is not None and count_finished(study) >= ctx.target:
            study.stop()

    return callback


def trial_run_context(ctx: StudyContext, trial: optuna.Trial) -> RunContext:
    """Where a trial's MLflow run goes: a child of the study's run, named ``trial-NNN``, KILLED when pruned."""
    return RunContext(
        ctx.tracker, role="trial", run_name=f"trial-{trial.number:03d}", parent_run_id=ctx.parent_run_id,
        extra_tags={"study": ctx.study.study_name, "trial_number": trial.number, "enqueued": bool(trial.user_attrs.get("enqueued"))},
        extra_params={f"trial.{k}": v for k, v in trial.params.items()}, killed_on=(optuna.TrialPruned,),
        on_run_start=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id), progress=ctx.progress, cache=ctx.cache,
    )


def make_objective(ctx: StudyContext) -> Callable[[optuna.Trial], float | tuple[float, ...]]:
    cfg = ctx.cfg
    encoder = cfg.search_encoder()
    task = build_task(cfg.task)
    target = pruning_target(cfg, task)

    def objective(trial: optuna.Trial):
        with heartbeat(trial):
            _claim_place(ctx, trial)
            try:
                return run_trial(trial)
            except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: no result; see faults.py (enqueued again, not counted)
                trial.set_user_attr(ATTR_LOST, f"interrupted ({e or 'Ctrl-C'})")
                raise

    def run_trial(trial: optuna.Trial):
        values = encoder.suggest(trial)
        tcfg = trial_config(cfg, values)
        run_ctx = trial_run_context(ctx, trial)
        if tcfg.compress is not None:  # a compression baseline's knobs are searched
            result = compress_run(tcfg, ctx.data, run_ctx, seed=cfg.seed, teachers=ctx.teachers)
            return _objective_values(cfg, result.metrics)
        pruning = not ctx.multi_objective and cfg.pruner.name != "none"
        if cfg.search.measurements > 1:
            return _measured_trial(ctx, trial, tcfg, run_ctx, target if pruning else None, task)
        callbacks = [_pruning_callback(trial, target)] if pruning else []
        result = train_student(tcfg, ctx.data, run_ctx, seed=cfg.seed, teachers=ctx.teachers, callbacks=callbacks,
                               log_model=False, log_weights=True)  # the best few become MLflow models when the study ends
        for k in ("tracking_time_s", "train_time_s", f"test_{task.validation_metric}"):
            trial.set_user_attr(k, result.metrics.get(k))
        return _objective_values(cfg, result.metrics)

    return objective


# ---------------------------------------------------------------- repeats and folds


def repeat_seed(seed: int, index: int) -> int:
    """The training seed of repeat ``index`` of a trial in a study seeded ``seed``: ``seed``
    itself for repeat 0 (the run a trial without repeats makes), else the first 4 bytes of
    sha256("<seed>/repeat/<index>") as an int below 2**31. Deterministic in every process;
    hashed rather than ``seed + index``, so that repeats do not reuse the small seeds that
    ``finalize`` (0, 1, 2, ...) and other studies use."""
    if index == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"{seed}/repeat/{index}".encode()).digest()[:4], "big") % 2**31


@dataclass(frozen=True)
class Measurement:
    """One training run of a trial with repeats or folds: its ``index``, ``seed``, and for a
    fold the ``(train, val)`` indices into ``data.full_train()`` (None for a repeat)."""

    kind: str  # "repeat" or "fold"
    index: int
    seed: int
    fold: tuple[torch.Tensor, torch.Tensor] | None = None

    def data(self, data: DataBundle) -> DataBundle:
        """The data this measurement trains and validates on: ``data`` itself for a repeat;
        for a fold, its part of train + val as train and val (test and transfer set kept)."""
        if self.fold is None:
            return data
        pool = data.full_train()
        return replace(data, train=pool.subset(self.fold[0]), val=pool.subset(self.fold[1]))


def measurements(cfg: StudyConfig, n_train: int) -> list[Measurement]:
    """The runs that measure each trial of ``cfg``: ``search.repeats`` repeats with
    :func:`repeat_seed` seeds, or ``search.folds`` folds of the ``n_train`` samples of
    train + val (``kfold_indices`` seeded by the study's seed; every fold trains with the
    study's seed), or one repeat with the study's seed."""
    if cfg.search.folds > 1:
        return [Measurement("fold", i, cfg.seed, f) for i, f in enumerate(kfold_indices(n_train, cfg.search.folds, cfg.seed))]
    return [Measurement("repeat", i, repeat_seed(cfg.seed, i)) for i in range(cfg.search.repeats)]


def _running_mean_pruning(trial: optuna.Trial, target: PruningTarget, done: Sequence[float], m: Measurement,
                          epochs: int) -> Callable[[int, dict[str, float]], None]:
    """The epoch callback of measurement ``m``: reports the running mean (the finished
    measurements' values ``done`` and this epoch's) at step ``m.index * epochs + epoch``."""

    def report(epoch: int, metrics: dict[str, float]) -> None:
        if target.metric not in metrics:
            return
        running = (sum(done) + metrics[target.metric]) / (len(done) + 1)
        trial.report(target.sign * running, step=m.index * epochs + epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at {m.kind} {m.index}, epoch {epoch} (running mean {target.metric} {running:.4f})")

    return report


def measured_summary(cfg: StudyConfig, results: Sequence[RunResult]) -> dict[str, float]:
    """What the trial's own run holds after its repeats or folds: every metric all of them
    have, as the mean (``*_time_s`` summed: what the trial cost), and ``<objective>_se``
    (standard error of the mean, ``stats.mean_se``) for each objective when n >= 2."""
    keys = [k for k in results[0].metrics if all(k in r.metrics for r in results[1:])]
    out: dict[str, float] = {}
    for k in keys:
        vals = [float(r.metrics[k]) for r in results]
        out[k] = sum(vals) if k.endswith("_time_s") else statistics.fmean(vals)  # a NaN stays NaN, as in a single run
    if len(results) > 1:
        for o in cfg.objectives:
            vals = [float(r.metrics[o.metric]) for r in results]
            out[f"{o.metric}_se"] = math.nan if any(math.isnan(v) for v in vals) else mean_se(vals)[1]
    return out


def _measured_trial(ctx: StudyContext, trial: optuna.Trial, tcfg: StudyConfig, run_ctx: RunContext,
                    target: PruningTarget | None, task: Task) -> float | tuple[float, ...]:
    """A distillation trial measured by repeats or folds (see the module docstring)."""
    cfg = ctx.cfg
    plan = measurements(cfg, len(ctx.data.train) + len(ctx.data.val))
    kind = plan[0].kind
    assert tcfg.student is not None
    tags = shared_tags(tcfg, method="distill", role=run_ctx.role or "trial", seed=cfg.seed, model=tcfg.student.name,
                       teacher_run_ids=[t.run_id for t in ctx.teachers]) | {"measured_by": kind, "measurements": len(plan)}
    params = {**flatten(tcfg.model_dump(mode="json")), "seed": cfg.seed, "full_train": False}
    results: list[RunResult] = []
    done: list[float] = []  # the pruning target's final value of each finished measurement
    with tracked_run(run_ctx, tcfg, name=run_ctx.run_name or f"trial-{trial.number:03d}", tags=tags, params=params) as run:
        for m in plan:
            child = run_ctx.replace(role=f"trial_{kind}", run_name=f"{run_ctx.run_name}-{kind}{m.index}",
                                    parent_run_id=run.run_id if run is not None else run_ctx.parent_run_id,
                                    extra_tags={**run_ctx.extra_tags, kind: m.index}, extra_params={}, on_run_start=None)
            callbacks = [] if target is None else [_running_mean_pruning(trial, target, done, m, tcfg.train.epochs)]
            r = train_student(tcfg, m.data(ctx.data), child, seed=m.seed, teachers=ctx.teachers, callbacks=callbacks,
                              log_model=False, log_weights=False)
            results.append(r)
            if target is not None and target.metric in r.metrics:
                done.append(float(r.metrics[target.metric]))
            each = {o.metric: float(r.metrics[o.metric]) for o in cfg.objectives}
            for metric in each:  # as each finishes: a pruned trial keeps what it measured
                trial.set_user_attr(f"{metric}_per_{kind}", [float(x.metrics[metric]) for x in results])
            if run is not None:
                run.log_metrics({f"{metric}_per_{kind}": v for metric, v in each.items()}, step=m.index)
        summary = measured_summary(cfg, results)
        if run is not None:
            run.log_metrics(summary, step=len(plan))
            run.log_state_dict(results[0].model)  # the first measurement's student: the one a kept model rebuilds
    trial.set_user_attr("measured_by", kind)
    for o in cfg.objectives:
        trial.set_user_attr(f"{o.metric}_mean", summary[o.metric])
        trial.set_user_attr(f"{o.metric}_se", summary.get(f"{o.metric}_se"))
    for k in ("tracking_time_s", "train_time_s", f"test_{task.validation_metric}"):
        trial.set_user_attr(k, summary.get(k))
    return _objective_values(cfg, summary)


def _mark_failed_run(tracker: Tracker):
    """Optuna callback: a trial that failed before its MLflow run ended is tagged there too."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            tracker.handle(run_id).set_tags({"optuna_state": trial.state.name})  # retried while the store is locked

    return callback
