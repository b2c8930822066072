"""All Optuna calls of the workbench: storages, samplers, pruners, search
spaces, the trial objective, workers, and the study plots.

One study = one Optuna study (in a journal file by default, PostgreSQL for
several machines) + one MLflow experiment with a parent run, a child run
per trial (linked by ``parent_run_id``, never by the active-run stack) and a
run per teacher. A child run's MLflow status follows the trial's state:
COMPLETE -> FINISHED, PRUNED -> KILLED, FAIL -> FAILED with the error as a tag.

Sampler seeds: every process that samples (the single process of ``study
run``, each of the ``--workers N`` processes, each ``study resume``, each
machine joining a PostgreSQL study) seeds its sampler with
``sampler_seed(seed, worker, started)``: the study's ``sampler.seed`` itself
for worker 0 of a study with no started trial (so a fresh single-process
study draws as it always did), otherwise a 32-bit seed mixed from
``(seed, worker, started)`` by numpy's ``SeedSequence``, where ``worker`` is
the process's index among the workers launched together (0 for a single
process) and ``started`` the number of trials the study had started (any
state but WAITING) when the launch began. So a seeded study replays exactly
when the same commands are run again on a fresh storage, while workers and
resumes never replay one another's draws. Two machines that join one
PostgreSQL study at the same trial count get the same seed and draw alike
(TPE's constant liar separates them only after its random start-up trials):
start them one after another, or leave such a study unseeded
(``sampler.seed: null``: every process then draws its own points). The grid
sampler is the exception: all its processes must shuffle the grid alike,
because Optuna's GridSampler maps trial number n to the n-th point of its
seeded shuffle (so trial numbers, unique in the storage, give distinct points).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState
from tqdm.auto import tqdm

from .config import (SPEC_KEYS, Choice, ConfigError, FloatRange, IntRange, StudyConfig, apply_overrides, condition_holds,
                     config_hash, parse)
from .pipeline import Teacher, compress_run, load_run_data, obtain_teachers, train_student
from .distill import TeacherLogitCache, normalize_teacher_weights
from .tracking import DEFAULT_DIR, Tracker

DEFAULT_JOURNAL = DEFAULT_DIR / "optuna" / "journal.log"
ATTR_CONFIG = "config_yaml"
ATTR_CONFIG_HASH = "config_hash"
ATTR_PARENT = "mlflow_parent_run_id"
ATTR_EXPERIMENT = "mlflow_experiment"
ATTR_TRACKING_URI = "mlflow_tracking_uri"
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own progress bar says what matters


class StudyError(RuntimeError):
    """A study cannot be run as asked (exists with another config, not found, ...)."""


# ---------------------------------------------------------------- storage, sampler, pruner


def storage_url(explicit: str | None = None) -> str:
    """The study storage: an explicit URL or journal path, else the journal file under ./mlruns."""
    return explicit or str(DEFAULT_JOURNAL)


def open_storage(url: str, *, create: bool = True) -> optuna.storages.BaseStorage:
    """PostgreSQL/MySQL/SQLite URLs go to RDBStorage (with heartbeats, so a dead
    worker's trial is failed rather than left RUNNING); anything else is a journal file."""
    if "://" in url:
        with warnings.catch_warnings():  # heartbeats are marked experimental, and are what we want
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=120)
    path = Path(url)
    if not create and not path.exists():
        raise StudyError(f"no study storage at {path} (run a study first, or pass --storage)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def check_storage(url: str) -> None:
    """Fail early, in one line, when the storage cannot be opened."""
    try:
        open_storage(url)
    except Exception as e:  # driver errors differ by backend; the first line says what is wrong
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StudyError(f"storage {url}: cannot be opened: {first}") from None


def sampler_seed(seed: int | None, *, worker: int = 0, started: int = 0) -> int | None:
    """The seed of one process's sampler (see the module docstring for the rule).

    seed: the study's ``sampler.seed`` (None: unseeded, returns None).
    worker: the process's index among the workers launched together, >= 0.
    started: trials of the study that had left WAITING when the launch began, >= 0.
    Returns ``seed`` for (worker 0, started 0), else an int in [0, 2**32).
    Raises ValueError on a negative worker or started.
    """
    if worker < 0 or started < 0:
        raise ValueError(f"worker and started must be >= 0, got {worker}, {started}")
    if seed is None:
        return None
    if worker == 0 and started == 0:
        return seed
    import numpy as np

    # SeedSequence hashes the whole tuple, so nearby inputs give unrelated streams.
    return int(np.random.SeedSequence([seed % 2**32, worker, started]).generate_state(1, dtype=np.uint32)[0])


def started_trials(study: optuna.Study) -> int:
    """Trials that have left the WAITING queue (running or finished): the ``started`` of sampler_seed."""
    return sum(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))


def make_sampler(cfg: StudyConfig, *, worker: int = 0, started: int = 0) -> optuna.samplers.BaseSampler:
    """The study's sampler for one process; ``worker`` and ``started`` as in sampler_seed."""
    s = cfg.sampler
    if s.name == "grid":
        # Every process shuffles alike: GridSampler gives trial n the n-th point of its shuffle.
        return optuna.samplers.GridSampler(s.grid, seed=s.seed)
    seed = sampler_seed(s.seed, worker=worker, started=started)
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    # constant_liar: other processes' RUNNING trials count as bad, so concurrent workers (or
    # machines joining a PostgreSQL study) steer away from one another's points; alone, it
    # changes nothing (the current trial is left out).
    # group: conditional entries (search `when`) make trials' spaces differ; grouped TPE models
    # each sub-space jointly instead of falling back to independent draws.
    group = any(p.when for p in cfg.search.params.values())
    with warnings.catch_warnings():  # group is marked experimental, and is what conditional spaces need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True, group=group)


def make_pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    p = cfg.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, p.n_warmup_steps), max_resource=cfg.train.epochs)
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------- search space


def suggest(trial: optuna.Trial, cfg: StudyConfig) -> dict[str, Any]:
    """Draw one point; returns the config overrides it stands for."""
    s = cfg.search
    values: dict[str, Any] = {}
    for name in ("temperature", "alpha"):
        space = getattr(s, name)
        if space is not None:
            values[f"distill.{name}"] = _suggest_one(trial, name, space)
    if s.teacher_weights:
        # K positive draws normalised onto the simplex; the normalised weights are what is logged.
        raw = [trial.suggest_float(f"w_{k}", 1e-3, 1.0) for k in range(len(cfg.teachers))]
        weights = [float(w) for w in normalize_teacher_weights(raw, len(raw))]
        trial.set_user_attr("teacher_weights", weights)
        values["distill.teacher_weights"] = weights
    for key, space in s.params.items():
        if condition_holds(space.when, values):  # define-by-run: a conditional knob only with its kind
            values[key] = _suggest_one(trial, key, space)
    return values


def _suggest_one(trial: optuna.Trial, name: str, space) -> Any:
    if isinstance(space, FloatRange):
        return trial.suggest_float(name, space.low, space.high, log=space.log)
    if isinstance(space, IntRange):
        return trial.suggest_int(name, space.int_low, space.int_high, log=space.log)
    if all(c is None or isinstance(c, (bool, int, float, str)) for c in space.choices):
        return trial.suggest_categorical(name, space.choices)
    # Optuna's choices must be scalars: lists (e.g. layer widths) travel as JSON text.
    return json.loads(trial.suggest_categorical(name, [json.dumps(c) for c in space.choices]))


def _decode(cfg: StudyConfig, name: str, value: Any) -> Any:
    """A trial's stored parameter back to its config value (see _suggest_one)."""
    space = cfg.search.params.get(name)
    if isinstance(space, Choice) and isinstance(value, str) and value not in space.choices:
        return json.loads(value)
    return value


def trial_config(cfg: StudyConfig, values: dict[str, Any]) -> StudyConfig:
    raw = cfg.model_dump(mode="json")
    for prefix in SPEC_KEYS:  # a kind's spec: a searched kind starts afresh; a number or null becomes its fixed spec
        drawn = [k for k in values if k.startswith(prefix + ".")]
        if drawn:
            section, name = prefix.split(".")
            current = raw[section][name]
            raw[section][name] = ({} if f"{prefix}.kind" in values else dict(current) if isinstance(current, dict)
                                  else {"kind": "fixed", **({"value": current} if current is not None else {})})
    raw = apply_overrides(raw, [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip()}" for k, v in values.items()])
    raw["distill"]["teacher_weights"] = values.get("distill.teacher_weights", cfg.distill.teacher_weights)
    return parse(StudyConfig, raw, source="trial")


def enqueue_points(cfg: StudyConfig) -> list[dict[str, float]]:
    """Known-good points (published defaults) as Optuna params; uniform teacher weights."""
    points = []
    for point in cfg.enqueue:
        p = dict(point)
        if cfg.search.teacher_weights:
            for k in range(len(cfg.teachers)):
                p.setdefault(f"w_{k}", 1.0)
        points.append(p)
    return points


# ---------------------------------------------------------------- the study


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


def make_objective(ctx: StudyContext) -> Callable[[optuna.Trial], float | tuple[float, ...]]:
    cfg = ctx.cfg

    def objective(trial: optuna.Trial):
        values = suggest(trial, cfg)
        tcfg = trial_config(cfg, values)
        callbacks = [] if ctx.multi_objective or cfg.pruner.name == "none" else [_pruning_callback(trial)]
        if tcfg.compress is not None:  # a compression baseline's knobs are searched
            result = compress_run(
                tcfg, ctx.data, ctx.tracker, seed=cfg.seed, teachers=ctx.teachers, role="trial", run_name=f"trial-{trial.number:03d}",
                parent_run_id=ctx.parent_run_id, extra_tags={"study": ctx.study.study_name, "trial_number": trial.number,
                                                             "enqueued": bool(trial.user_attrs.get("enqueued"))},
                extra_params={f"trial.{k}": v for k, v in trial.params.items()}, killed_on=(optuna.TrialPruned,),
                progress=ctx.progress, cache=ctx.cache, on_run_start=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id),
            )
            return _objective_values(cfg, result.metrics)
        result = train_student(
            tcfg,
            ctx.data,
            ctx.tracker,
            seed=cfg.seed,
            teachers=ctx.teachers,
            role="trial",
            run_name=f"trial-{trial.number:03d}",
            parent_run_id=ctx.parent_run_id,
            extra_tags={"study": ctx.study.study_name, "trial_number": trial.number, "enqueued": bool(trial.user_attrs.get("enqueued"))},
            extra_params={f"trial.{k}": v for k, v in trial.params.items()},
            callbacks=callbacks,
            killed_on=(optuna.TrialPruned,),
            log_model=False,
            log_weights=True,  # the best few become MLflow models when the study ends
            progress=ctx.progress,
            cache=ctx.cache,
            on_run_start=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id),
        )
        for k in ("tracking_time_s", "train_time_s", "test_accuracy"):
            trial.set_user_attr(k, result.metrics.get(k))
        return _objective_values(cfg, result.metrics)

    return objective


def _objective_values(cfg: StudyConfig, metrics: dict[str, float]) -> float | tuple[float, ...]:
    values = tuple(float(metrics[o.metric]) for o in cfg.objectives)
    return values[0] if len(values) == 1 else values


def _pruning_callback(trial: optuna.Trial):
    def report(epoch: int, metrics: dict[str, float]) -> None:
        if "val_accuracy" not in metrics:
            return
        trial.report(metrics["val_accuracy"], step=epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} (val_accuracy {metrics['val_accuracy']:.4f})")

    return report


def _mark_failed_run(tracker: Tracker):
    """Optuna callback: a trial that failed before its MLflow run ended is tagged there too."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            tracker.client.set_tag(run_id, "optuna_state", trial.state.name)

    return callback


def create_or_join(cfg: StudyConfig, tracker: Tracker, storage: str, *, config_path: str | None = None) -> optuna.Study:
    """Create the study (with its MLflow parent run and enqueued defaults), or join
    an existing one whose config is the same (its sampler then seeded by the trials
    already started, see sampler_seed)."""
    store = open_storage(storage)
    name = cfg.name
    digest = config_hash(cfg)
    existing = {s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)}
    if name in existing:
        study = optuna.load_study(study_name=name, storage=store, pruner=make_pruner(cfg))
        if study.user_attrs.get(ATTR_CONFIG_HASH) != digest:
            raise StudyError(
                f"study {name!r} already exists in {storage} with another config; "
                f"continue it with `research study resume {name}` or give the study another name"
            )
        study.sampler = make_sampler(cfg, started=started_trials(study))
        return _wait_for_parent(study, store)
    study = optuna.create_study(
        study_name=name, storage=store, directions=cfg.directions,
        sampler=make_sampler(cfg), pruner=make_pruner(cfg),
    )
    try:
        parent = tracker.start(cfg.tracking.experiment, f"study-{name}", tags={"role": "study", "study": name, "method": "study",
                                                                            "dataset": cfg.data.dataset, "sampler": cfg.sampler.name})
        parent.log_params({"study.n_trials": cfg.n_trials, "study.sampler": cfg.sampler.name, "study.pruner": cfg.pruner.name,
                           "study.objectives": ",".join(f"{o.metric}:{o.direction}" for o in cfg.objectives),
                           "study.searched": ",".join(cfg.searched_names()), "study.storage": storage})
        parent.log_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), "config/study.yaml")
        if config_path and Path(config_path).is_file():
            parent.log_artifact(config_path, "config")
        study.set_user_attr(ATTR_CONFIG, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        study.set_user_attr(ATTR_CONFIG_HASH, digest)
        study.set_user_attr(ATTR_EXPERIMENT, cfg.tracking.experiment)
        study.set_user_attr(ATTR_TRACKING_URI, tracker.uri)
        if cfg.sampler.name != "grid":
            for point in enqueue_points(cfg):
                study.enqueue_trial(point, user_attrs={"enqueued": True})
        study.set_user_attr(ATTR_PARENT, parent.run_id)  # last: joiners wait for it
    except BaseException:
        optuna.delete_study(study_name=name, storage=store)  # no half-made study
        raise
    return study


def _wait_for_parent(study: optuna.Study, store: optuna.storages.BaseStorage, timeout_s: float = 60.0) -> optuna.Study:
    """A worker on another machine may join while the creator is still setting up."""
    deadline = time.monotonic() + timeout_s
    while ATTR_PARENT not in study.user_attrs:
        if time.monotonic() > deadline:
            raise StudyError(f"study {study.study_name!r} has no MLflow parent run yet; is its creator still running?")
        time.sleep(1.0)
        study = optuna.load_study(study_name=study.study_name, storage=store, sampler=study.sampler, pruner=study.pruner)
    return study


def load_existing(name: str, storage: str, *, worker: int = 0, started: int | None = None) -> tuple[optuna.Study, StudyConfig]:
    """An existing study and the config it was created with; its sampler seeded for
    ``worker`` and ``started`` (default: the trials started now), see sampler_seed.
    Raises StudyError when there is no such study."""
    store = open_storage(storage, create=False)
    names = [s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)]
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise StudyError(f"no study named {name!r} in {storage} (studies there: {known})")
    study = optuna.load_study(study_name=name, storage=store)
    cfg = parse(StudyConfig, yaml.safe_load(study.user_attrs[ATTR_CONFIG]), source=f"study {name}")
    study.sampler = make_sampler(cfg, worker=worker, started=started_trials(study) if started is None else started)
    study.pruner = make_pruner(cfg)
    return study, cfg


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


def prepare_context(cfg: StudyConfig, study: optuna.Study, *, progress: bool) -> StudyContext:
    tracker = Tracker(study.user_attrs.get(ATTR_TRACKING_URI) or cfg.tracking.uri)
    data = load_run_data(cfg, progress=progress)
    teachers = obtain_teachers(cfg, data, tracker, progress=progress)
    cache = TeacherLogitCache(Path(cfg.data.cache_dir) / "teacher_logits")
    return StudyContext(cfg, study, tracker, study.user_attrs[ATTR_PARENT], data, teachers, cache, progress=False)


def run_trials(ctx: StudyContext, n_trials: int, *, timeout_s: float | None = None, callbacks: Sequence[Callable] = ()) -> None:
    """Run ``n_trials`` trials in this process; a failing trial is FAIL and the study goes on."""
    ctx.study.optimize(
        make_objective(ctx), n_trials=n_trials, timeout=timeout_s, catch=(Exception,),
        callbacks=[_mark_failed_run(ctx.tracker), *callbacks],
    )


def split_trials(total: int, workers: int) -> list[int]:
    """Exact shares: the study ends with exactly ``total`` more finished trials."""
    base, extra = divmod(total, workers)
    return [base + (1 if i < extra else 0) for i in range(workers) if base + (1 if i < extra else 0) > 0]


def launch(
    cfg: StudyConfig,
    study: optuna.Study,
    storage: str,
    *,
    n_trials: int,
    workers: int = 1,
    timeout_s: float | None = None,
    progress: bool = True,
) -> None:
    """Run ``n_trials`` more trials with ``workers`` processes; a progress bar shows
    trials done, the best value so far and the time left."""
    start_count = count_finished(study)
    started = started_trials(study)  # the workers' seeds derive from it (see sampler_seed)
    # Teachers first, once (trained, or found in MLflow by their key); workers then reuse them.
    ctx = prepare_context(cfg, study, progress=progress)
    bar = tqdm(total=n_trials, desc=f"study {cfg.name}", unit="trial", disable=not progress, dynamic_ncols=True)
    try:
        if workers <= 1:

            def tick(study: optuna.Study, trial: FrozenTrial) -> None:
                bar.update(1)
                _show_best(bar, study, cfg)

            run_trials(ctx, n_trials, timeout_s=timeout_s, callbacks=[tick])
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            procs = [
                subprocess.Popen([sys.executable, "-m", "research.cli", "study", "worker", cfg.name, "--storage", storage,
                                  "--n-trials", str(share), "--threads", str(threads), "--worker-index", str(index),
                                  "--started", str(started)]
                                 + (["--timeout", str(timeout_s)] if timeout_s else []))
                for index, share in enumerate(split_trials(n_trials, workers))
            ]
            while any(p.poll() is None for p in procs):
                _poll(bar, study, cfg, start_count)
                time.sleep(1.0)
            _poll(bar, study, cfg, start_count)
            bad = [p.returncode for p in procs if p.returncode != 0]
            if bad:
                raise RuntimeError(f"{len(bad)} worker(s) exited with an error (codes {bad}); see their output above")
    finally:
        bar.close()


def _poll(bar: tqdm, study: optuna.Study, cfg: StudyConfig, start_count: int) -> None:
    done = count_finished(study) - start_count
    if done > bar.n:
        bar.update(done - bar.n)
        _show_best(bar, study, cfg)


def _show_best(bar: tqdm, study: optuna.Study, cfg: StudyConfig) -> None:
    if len(cfg.objectives) == 1:
        try:
            bar.set_postfix(best=f"{study.best_value:.4f}", trial=study.best_trial.number)
        except ValueError:  # no completed trial yet
            pass


def worker_main(name: str, storage: str, n_trials: int, threads: int, timeout_s: float | None, *, worker: int = 0, started: int = 0) -> None:
    """One worker process: joins the study, reuses the teachers, runs its share.
    ``worker`` (its index) and ``started`` (trials started when the launch began)
    seed its sampler apart from the other workers' (see sampler_seed)."""
    import torch

    torch.set_num_threads(threads)
    study, cfg = load_existing(name, storage, worker=worker, started=started)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"threads": threads})})
    ctx = prepare_context(cfg, study, progress=False)
    run_trials(ctx, n_trials, timeout_s=timeout_s)


# ---------------------------------------------------------------- after the trials


def best_trials(study: optuna.Study, k: int = 1) -> list[FrozenTrial]:
    """The best ``k`` completed trials, best first.

    One objective: by its value, the lowest trial number on a tie. Several: the
    Pareto front first (Optuna's ``study.best_trials``), then the dominated
    trials, each group by the first objective. Ordering by the first objective
    alone could put first a dominated trial that ties on it with a front member."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    sign = -1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else 1
    front = {t.number for t in study.best_trials} if len(study.directions) > 1 and done else set()
    return sorted(done, key=lambda t: (len(front) > 0 and t.number not in front, sign * t.values[0], t.number))[:k]


def enqueued_trials(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("enqueued")]


def finish_study(ctx_tracker: Tracker, study: optuna.Study, cfg: StudyConfig, *, plots_dir: Path | None = None) -> dict[str, Any]:
    """Best parameters and metrics, kept models and the study plots on the parent run."""
    from .models import build_model
    from .report import figures_to_files

    tracker = ctx_tracker
    parent_id = study.user_attrs[ATTR_PARENT]
    parent = tracker.handle(parent_id)
    best = best_trials(study, max(1, cfg.keep_models))
    summary: dict[str, Any] = {"n_finished": count_finished(study)}
    states = [t.state for t in study.get_trials(deepcopy=False)]
    counts = {s.name.lower(): states.count(s) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    parent.log_metrics({f"trials_{k}": v for k, v in counts.items()})
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
            student = trial_config(cfg, _values_of(t, cfg)).student  # the trial may have searched its size
            model = build_model(student.name, input_shape=data_shape[0], num_classes=data_shape[1], **student.args)
            model.load_state_dict(tracker.load_state_dict(run_id))
            tracker.handle(run_id).log_model(model, input_example=data_shape[2])
            tracker.client.set_tag(run_id, "kept_model", "true")
    figures = study_figures(study, cfg)
    for name, fig in figures.items():
        parent.log_figure(fig, f"plots/{name}.png")
    if plots_dir is not None:
        figures_to_files(figures, plots_dir)
    _close_figures(figures)
    tracker.end(parent, "FINISHED")
    return summary


def study_figures(study: optuna.Study, cfg: StudyConfig) -> dict[str, Any]:
    """Optuna's own plots (matplotlib): history, importances, T x alpha contour, parallel coordinates."""
    import matplotlib

    matplotlib.use("Agg")
    import optuna.visualization.matplotlib as ovm

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message="Attempting to set identical low and high ylims")  # one-valued axes
    warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")  # the target is flipped below where needed

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    figs: dict[str, Any] = {}
    if not done:
        return figs
    multi = len(cfg.objectives) > 1
    target = (lambda t: t.values[0]) if multi else None
    tname = cfg.objectives[0].metric
    jobs: dict[str, Callable[[], Any]] = {
        "optimization_history": lambda: ovm.plot_optimization_history(study, target=target, target_name=tname),
        "parallel_coordinate": lambda: ovm.plot_parallel_coordinate(study, target=target, target_name=tname),
    }
    if len(done) >= 2 and len(study.best_trials[0].params if not multi else done[0].params) >= 2:
        # The importance evaluator ranks toward low targets: flip a maximised first objective.
        flip = multi and cfg.objectives[0].direction == "maximize"
        imp_target = (lambda t: -t.values[0]) if flip else target
        jobs["param_importances"] = lambda: ovm.plot_param_importances(study, target=imp_target, target_name=tname)
    if "temperature" in done[0].params and "alpha" in done[0].params:
        jobs["contour_temperature_alpha"] = lambda: ovm.plot_contour(study, params=["temperature", "alpha"], target=target, target_name=tname)
    if multi:
        jobs["pareto_front"] = lambda: ovm.plot_pareto_front(study, target_names=[o.metric for o in cfg.objectives])
    for name, job in jobs.items():
        try:
            ax = job()
        except Exception as e:  # a plot that does not apply (e.g. importances without variance) is left out
            logging.getLogger(__name__).warning("study plot %s skipped: %s", name, e)
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(8, 5.5)
        fig.tight_layout()
        figs[name] = fig
    return figs


def _close_figures(figures: dict[str, Any]) -> None:
    import matplotlib.pyplot as plt

    for fig in figures.values():
        plt.close(fig)


def finalize(study: optuna.Study, cfg: StudyConfig, *, seeds: Sequence[int], include_default: bool = True, progress: bool = True) -> dict[str, dict[str, float]]:
    """Retrain the best configuration (and the first enqueued default) on the whole
    training split with several seeds; test mean and spread go to the parent run."""
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
    out: dict[str, dict[str, float]] = {}
    for label, trial in candidates.items():
        values = _values_of(trial, cfg)
        tcfg = trial_config(cfg, values)
        accs = []
        for seed in seeds:
            r = train_student(tcfg, data, tracker, seed=seed, teachers=teachers, role=f"final_{label}", run_name=f"final-{label}-seed{seed}",
                              parent_run_id=parent_id, full_train=True, progress=progress, cache=cache,
                              extra_tags={"study": study.study_name, "from_trial": trial.number},
                              extra_params={f"trial.{k}": v for k, v in trial.params.items()})
            accs.append(r.metrics["test_accuracy"])
        stats = {"test_accuracy_mean": statistics.fmean(accs), "test_accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                 "seeds": float(len(accs)), "trial": float(trial.number)}
        out[label] = stats
        tracker.handle(parent_id).log_metrics({f"final_{label}_{k}": v for k, v in stats.items()})
    return out


def _values_of(trial: FrozenTrial, cfg: StudyConfig) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for k, v in trial.params.items():
        if k in ("temperature", "alpha"):
            values[f"distill.{k}"] = v
        elif not k.startswith("w_"):
            values[k] = _decode(cfg, k, v)
    if "teacher_weights" in trial.user_attrs:
        values["distill.teacher_weights"] = trial.user_attrs["teacher_weights"]
    return values


def list_studies(storage: str) -> list[dict[str, Any]]:
    store = open_storage(storage, create=False)
    rows = []
    for s in optuna.get_all_study_summaries(store, include_best_trial=True):
        study = optuna.load_study(study_name=s.study_name, storage=store)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        best = s.best_trial.values[0] if s.best_trial is not None and s.best_trial.values else None
        rows.append({"name": s.study_name, "complete": states.count(TrialState.COMPLETE), "pruned": states.count(TrialState.PRUNED),
                     "failed": states.count(TrialState.FAIL), "running": states.count(TrialState.RUNNING), "best": best,
                     "experiment": s.user_attrs.get(ATTR_EXPERIMENT, ""), "started": s.datetime_start})
    return rows


def trials_table(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, values, params, MLflow run, timing."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name, "values": t.values, "params": dict(t.params),
                     "teacher_weights": t.user_attrs.get("teacher_weights"), "enqueued": bool(t.user_attrs.get("enqueued")),
                     "run_id": t.user_attrs.get("mlflow_run_id"), "test_accuracy": t.user_attrs.get("test_accuracy"),
                     "tracking_time_s": t.user_attrs.get("tracking_time_s"), "train_time_s": t.user_attrs.get("train_time_s"),
                     "duration_s": t.duration.total_seconds() if t.duration else None})
    return rows


__all__ = [
    "ConfigError", "StudyError", "best_trials", "create_or_join", "finalize", "finish_study", "launch", "list_studies", "load_existing", "sampler_seed",
    "storage_url", "trials_table", "worker_main",
]
