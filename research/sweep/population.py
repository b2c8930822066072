"""A study's trials K at a time: asked together, their students trained in one stacked pass.

With ``population: K`` (or ``--population K``), each round asks K trials (``study.ask()`` K times;
enqueued points come out first, and TPE's constant liar counts the round's RUNNING trials as bad,
so the K points differ), trains their students together (:func:`research.population.fit_population`)
and tells each trial its own result. Each trial keeps its own MLflow child run, as a lone trial's:
the same name, tags (plus ``population``: the round's size), params, per-epoch metrics (logged
after the round has trained, with the final metrics, in one batched call), final evaluation, weights
and status (PRUNED -> KILLED). The final evaluation of the round's members is one stacked pass per
split (the same numbers as each member alone); their deployment metrics are measured once per
round, their graphs being identical (tag ``latency_shared_by_population``). Pruning is per
member: each epoch reports the member's metric to its own trial; a member its pruner stops leaves the
stack and its trial ends PRUNED at that epoch.

A round trains one at a time, through the lone objective, when its trials cannot share a stack (the
reason is logged): a student that is not a plain MLP (dropout, BatchNorm, a CNN), a compression
study, repeats or folds, augmented or uncached teacher inputs, an objective other than ``kd`` with a
fixed temperature and fixed teacher weights, a task other than classification, or drawn values that
change more than T, alpha, the teachers' weights, the learning rate and the weight decay.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from ..config import StudyConfig, flatten
from ..distill.objectives.kd import KD
from ..models import build_model
from ..pipeline import concat_splits, distillation_task, evaluate_population, evaluate_run
from ..population import Member, MemberResult, fit_population, stack_problem
from ..runs import RunContext, shared_tags, tracked_run
from ..tasks import build_task
from ..train import seed_everything
from .faults import heartbeat
from .objective import StudyContext, _objective_values, _pruning_callback, make_objective, pruning_target, trial_config, trial_run_context
from .storage import ATTR_LOST, count_finished

log = logging.getLogger(__name__)

# Config keys that may differ between the members of one stack (each member has its own).
MEMBER_KEYS = ("distill.temperature", "distill.alpha", "distill.teacher_weights", "train.lr", "train.weight_decay")


def population_problem(ctx: StudyContext, cfgs: Sequence[StudyConfig]) -> str | None:
    """Why these trial configs cannot be trained as one stack, or None when they can."""
    cfg = ctx.cfg
    if cfg.compress is not None:
        return "a compression study"
    if cfg.search.measurements > 1:
        return "trials with repeats or folds"
    if cfg.task != "classification":
        return f"task {cfg.task!r}"
    if ctx.data.augment is not None:
        return "augmented inputs (the teachers see each batch)"
    if not ctx.teachers:
        return "no teachers"
    shared = None
    for tcfg in cfgs:
        d = tcfg.distill
        if not d.cache_teacher_logits:
            return "uncached teacher logits"
        if d.objective != "kd" or d.weighting is not None or isinstance(d.temperature, dict) or d.args:
            return "an objective other than kd with a fixed temperature and fixed teacher weights"
        rest = {k: v for k, v in flatten(tcfg.model_dump(mode="json")).items() if not k.startswith(MEMBER_KEYS)}
        if shared is None:
            shared = rest
        elif rest != shared:
            changed = sorted(k for k in set(rest) | set(shared) if rest.get(k) != shared.get(k))
            return f"the drawn values change {', '.join(changed[:3])} (only {', '.join(MEMBER_KEYS)} may differ in a stack)"
    assert cfgs[0].student is not None
    with torch.random.fork_rng(devices=[]):  # a probe: the global RNG stays as the trials will find it
        student = build_model(cfgs[0].student.name, input_shape=ctx.data.input_shape, num_classes=ctx.data.num_classes,
                              **cfgs[0].student.args)
    problem = stack_problem(student)
    return f"the student {cfgs[0].student.name}: {problem}" if problem else None


def run_population(ctx: StudyContext, n_trials: int, population: int, *, timeout_s: float | None = None,
                   callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = ()) -> None:
    """Run ``n_trials`` trials in rounds of up to ``population``; each finished trial is told and
    passed to ``callbacks`` (Optuna's ``(study, frozen_trial)``), as ``study.optimize`` does. A
    round starts only within ``timeout_s`` of the first."""
    if population < 1:
        raise ValueError(f"population must be >= 1, got {population}")
    lone = make_objective(ctx)
    start = time.monotonic()
    done = 0
    while done < n_trials and (timeout_s is None or time.monotonic() - start < timeout_s):
        room = _room_left(ctx)
        if room <= 0:  # other processes filled the study (see objective._claim_place)
            break
        trials = [ctx.study.ask() for _ in range(min(population, n_trials - done, room))]
        _run_round(ctx, trials, lone, callbacks)
        done += len(trials)


def _room_left(ctx: StudyContext) -> int:
    """Trials the study may still start: its target less the finished and running ones."""
    if ctx.target is None:
        return 1 << 30
    running = len(ctx.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    return ctx.target - count_finished(ctx.study) - running


def _tell(ctx: StudyContext, trial: optuna.Trial, callbacks: Sequence[Callable], *, values=None,
          state: TrialState = TrialState.COMPLETE) -> None:
    if state == TrialState.COMPLETE:
        vals = values if isinstance(values, tuple) else (values,)
        if any(not isinstance(v, (int, float)) or math.isnan(float(v)) for v in vals):
            log.warning("trial %d returned %r: told FAIL", trial.number, values)
            state, values = TrialState.FAIL, None
    frozen = ctx.study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
    for cb in callbacks:
        cb(ctx.study, frozen)


def _run_alone(ctx: StudyContext, trial: optuna.Trial, lone: Callable, callbacks: Sequence[Callable]) -> None:
    """One trial through the lone objective, told as ``study.optimize`` tells it."""
    try:
        values = lone(trial)
    except optuna.TrialPruned:
        _tell(ctx, trial, callbacks, state=TrialState.PRUNED)
    except Exception as e:  # noqa: BLE001 - as optimize(catch=(Exception,)): the trial fails, the study goes on
        log.warning("trial %d failed: %s: %s", trial.number, type(e).__name__, e)
        _tell(ctx, trial, callbacks, state=TrialState.FAIL)
    else:
        _tell(ctx, trial, callbacks, values=values)


def _run_round(ctx: StudyContext, trials: list[optuna.Trial], lone: Callable, callbacks: Sequence[Callable]) -> None:
    cfg = ctx.cfg
    planned: list[tuple[optuna.Trial, StudyConfig]] = []
    encoder = cfg.search_encoder()
    for trial in trials:
        try:
            planned.append((trial, trial_config(cfg, encoder.suggest(trial))))
        except Exception as e:  # noqa: BLE001 - a bad point fails its own trial only
            log.warning("trial %d failed: %s: %s", trial.number, type(e).__name__, e)
            _tell(ctx, trial, callbacks, state=TrialState.FAIL)
    if not planned:
        return
    problem = population_problem(ctx, [c for _, c in planned]) if len(planned) > 1 else "a round of one trial"
    if problem:
        if len(planned) > 1:
            log.warning("population of %d: trained one at a time (%s)", len(planned), problem)
        for trial, _ in planned:
            _run_alone(ctx, trial, lone, callbacks)
        return
    with contextlib.ExitStack() as beats:
        for trial, _ in planned:
            beats.enter_context(heartbeat(trial))
            trial.set_user_attr("population", len(planned))  # the round's size, on every member whatever its end
        told = 0
        try:
            try:
                results = _train_round(ctx, planned)
            except Exception as e:  # noqa: BLE001 - the round's set-up or training failed: its trials fail, the study goes on
                log.warning("population of %d failed: %s: %s", len(planned), type(e).__name__, e)
                for trial, _ in planned:
                    _tell(ctx, trial, callbacks, state=TrialState.FAIL)
                    told += 1
                return
            evaluations = _evaluate_round(ctx, planned, results)
            for (trial, tcfg), result, evaluation in zip(planned, results, evaluations):
                _finish_member(ctx, trial, tcfg, result, len(planned), callbacks, evaluation)
                told += 1
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: the round's open trials are lost (see faults.py)
            for trial, _ in planned[told:]:
                with contextlib.suppress(Exception):
                    trial.set_user_attr(ATTR_LOST, f"interrupted ({e or 'Ctrl-C'})")
            raise


def _train_round(ctx: StudyContext, planned: list[tuple[optuna.Trial, StudyConfig]]) -> list[MemberResult]:
    cfg, data = ctx.cfg, ctx.data
    task = build_task(cfg.task)
    target = pruning_target(cfg, task)
    pruning = not ctx.multi_objective and cfg.pruner.name != "none"
    train_split = concat_splits(data.train, data.transfer)
    members, cached = [], None
    for trial, tcfg in planned:
        seed_everything(cfg.seed, tcfg.train.deterministic)  # as train_student: the initial weights follow the seed
        assert tcfg.student is not None
        student = build_model(tcfg.student.name, input_shape=data.input_shape, num_classes=data.num_classes, **tcfg.student.args)
        learner = distillation_task(student, ctx.teachers, train_split, data, tcfg, cache=ctx.cache, task=task)
        assert isinstance(learner.objective, KD) and learner.cached_logits is not None
        cached = learner.cached_logits
        members.append(Member(student, temperature=float(tcfg.distill.temperature), alpha=tcfg.distill.alpha, lr=tcfg.train.lr,
                              weight_decay=tcfg.train.weight_decay, teacher_weights=tcfg.distill.teacher_weights,
                              epoch_values=learner.epoch_values(),
                              callbacks=[_pruning_callback(trial, target)] if pruning else []))
    assert cached is not None
    return fit_population(members, train_split, planned[0][1].train, seed=cfg.seed, teacher_logits=cached, task=task,
                          val=data.val, combine=planned[0][1].distill.combine)


def _evaluate_round(ctx: StudyContext, planned: list[tuple[optuna.Trial, StudyConfig]],
                    results: list[MemberResult]) -> list[dict[str, float] | None]:
    """The final evaluation of every member that trained to the end, in one stacked pass per split
    (``pipeline.evaluate_population``: the same metrics as ``evaluate_run`` on each member alone;
    the deployment metrics of the round's one architecture measured once); None for a member
    stopped early (pruned or diverged: not evaluated) and for all when the stacked evaluation
    fails, whose members are then evaluated one by one, as alone (their own failures their own)."""
    done = [i for i, r in enumerate(results) if r.error is None]
    out: list[dict[str, float] | None] = [None] * len(results)
    if not done:
        return out
    cfg = planned[0][1]
    try:
        metrics = evaluate_population([results[i].model for i in done], ctx.data, cfg, teachers=[t.model for t in ctx.teachers],
                                      teacher_weights=[planned[i][1].distill.teacher_weights for i in done],
                                      combine=cfg.distill.combine, cache=ctx.cache)
    except Exception as e:  # noqa: BLE001 - each member is then evaluated alone, and fails alone
        log.warning("population of %d: evaluated one at a time (%s: %s)", len(planned), type(e).__name__, e)
        return out
    for i, m in zip(done, metrics):
        out[i] = m
    return out


def _finish_member(ctx: StudyContext, trial: optuna.Trial, tcfg: StudyConfig, result: MemberResult, size: int,
                   callbacks: Sequence[Callable], evaluation: dict[str, float] | None = None) -> None:
    """Log the member as its trial's run (what ``train_student`` logs for a lone trial) and tell its
    trial. ``evaluation``: the member's final metrics from :func:`_evaluate_round` (None: evaluated
    here, alone). Its per-epoch history and final metrics go to MLflow in one batched call."""
    cfg = ctx.cfg
    task = build_task(cfg.task)
    run_ctx: RunContext = trial_run_context(ctx, trial)
    assert tcfg.student is not None
    tags = shared_tags(tcfg, method="distill", role=run_ctx.role or "trial", seed=cfg.seed, model=tcfg.student.name,
                       teacher_run_ids=[t.run_id for t in ctx.teachers]) | {"population": size}
    if evaluation is not None:
        # Deployment metrics (params, bytes, FLOPs, latency) were measured once for the round: its
        # members' graphs are identical, so the latency is that one measurement's (see evaluate_population).
        tags["latency_shared_by_population"] = "true"
    params = {**flatten(tcfg.model_dump(mode="json")), "seed": cfg.seed, "full_train": False}
    history = result.history
    try:
        with tracked_run(run_ctx, tcfg, name=run_ctx.run_name or f"trial-{trial.number:03d}", tags=tags, params=params) as run:
            metrics = None
            try:
                if result.error is not None:
                    raise result.error
                metrics = dict(evaluation) if evaluation is not None else evaluate_run(
                    result.model, ctx.data, tcfg, teachers=[t.model for t in ctx.teachers],
                    teacher_weights=tcfg.distill.teacher_weights, combine=tcfg.distill.combine, cache=ctx.cache)
                metrics["train_time_s"] = history.wall_time_s
                metrics["train_samples"] = float(len(ctx.data.train) + (len(ctx.data.transfer) if ctx.data.transfer is not None else 0))
            finally:  # the epochs it ran, whatever stopped it (a pruned member's too), then its final metrics
                if run is not None:
                    run.log_history(history.epochs, final=metrics, final_step=len(history.epochs))
            if run is not None:
                run.log_state_dict(result.model)  # as a lone trial: the best few become MLflow models when the study ends
                metrics["tracking_time_s"] = run.seconds
                run.log_metrics({"tracking_time_s": run.seconds}, step=len(history.epochs))
    except optuna.TrialPruned:
        _tell(ctx, trial, callbacks, state=TrialState.PRUNED)
        return
    except Exception as e:  # noqa: BLE001 - a diverged or failing member fails its own trial only
        log.warning("trial %d failed: %s: %s", trial.number, type(e).__name__, e)
        _tell(ctx, trial, callbacks, state=TrialState.FAIL)
        return
    for k in ("tracking_time_s", "train_time_s", f"test_{task.validation_metric}"):
        trial.set_user_attr(k, metrics.get(k))
    try:
        values = _objective_values(cfg, metrics)
    except KeyError as e:
        log.warning("trial %d failed: no metric %s", trial.number, e)
        _tell(ctx, trial, callbacks, state=TrialState.FAIL)
        return
    _tell(ctx, trial, callbacks, values=values)
