"""A study's life: create it (or join it), load it, run its trials in one or several processes.

One study = one Optuna study (in a journal file by default, PostgreSQL for
several machines) + one MLflow experiment with a parent run, a child run per
trial (linked by ``parent_run_id``, never by the active-run stack) and a run
per teacher. The study keeps the config it was created with (a joiner's must
hash alike) and where its MLflow side lives, as user attributes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import optuna
import yaml
from optuna.trial import FrozenTrial
from tqdm.auto import tqdm

from ..config import StudyConfig, config_hash, parse
from ..data import DataBundle
from ..distill import TeacherLogitCache
from ..pipeline import load_run_data, obtain_teachers
from ..tracking import Tracker, mask_url
from ..train import seed_everything
from .faults import recover
from .objective import StudyContext, _mark_failed_run, make_objective, stop_at_target
from .population import run_population
from .storage import (
    ATTR_CONFIG,
    ATTR_CONFIG_HASH,
    ATTR_EXPERIMENT,
    ATTR_PARENT,
    ATTR_TRACKING_URI,
    StudyError,
    count_finished,
    make_pruner,
    make_sampler,
    open_storage,
    started_trials,
)


class WorkerError(RuntimeError):
    """A worker process of ``launch`` exited with an error or was killed."""


def enqueue_points(cfg: StudyConfig) -> list[dict[str, Any]]:
    """The study file's ``enqueue:`` entries (published defaults) as Optuna params,
    through the search encoder; teachers' weights not given are uniform."""
    encoder = cfg.search_encoder()
    return [encoder.enqueue_params(point) for point in cfg.enqueue]


def create_or_join(cfg: StudyConfig, tracker: Tracker, storage: str, *, config_path: str | None = None) -> optuna.Study:
    """Create the study (with its MLflow parent run and enqueued defaults), or join
    an existing one whose config is the same (its sampler then seeded by the trials
    already started, see storage.sampler_seed). Raises StudyError when a study of that
    name exists with another config."""
    store = open_storage(storage)
    name = cfg.name
    digest = config_hash(cfg)
    existing = {s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)}
    if name in existing:
        study = optuna.load_study(study_name=name, storage=store, pruner=make_pruner(cfg))
        if study.user_attrs.get(ATTR_CONFIG_HASH) != digest:
            raise StudyError(
                f"study {name!r} already exists in {mask_url(storage)} with another config; "
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
                           "study.searched": ",".join(cfg.searched_names()), "study.storage": mask_url(storage)})
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
    ``worker`` and ``started`` (default: the trials started now), see storage.sampler_seed.
    Raises StudyError when there is no such study."""
    store = open_storage(storage, create=False)
    names = [s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)]
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise StudyError(f"no study named {name!r} in {mask_url(storage)} (studies there: {known})")
    study = optuna.load_study(study_name=name, storage=store)
    cfg = parse(StudyConfig, yaml.safe_load(study.user_attrs[ATTR_CONFIG]), source=f"study {name}")
    study.sampler = make_sampler(cfg, worker=worker, started=started_trials(study) if started is None else started)
    study.pruner = make_pruner(cfg)
    return study, cfg


def prepare_context(cfg: StudyConfig, study: optuna.Study, *, progress: bool, data: DataBundle | None = None,
                    target: int | None = None) -> StudyContext:
    """Data (``data`` when the caller already loaded it) and teachers (trained, or found in
    MLflow by their key) for this process's trials; ``target``: the finished trials at which
    every process of the study stops (see objective._claim_place)."""
    tracker = Tracker(study.user_attrs.get(ATTR_TRACKING_URI) or cfg.tracking.uri)
    data = data if data is not None else load_run_data(cfg, progress=progress)
    teachers = obtain_teachers(cfg, data, tracker, progress=progress)
    cache = TeacherLogitCache(Path(cfg.data.cache_dir) / "teacher_logits")
    # torch's first use_deterministic_algorithms call imports modules for ~2.5 s (benchmarks/study_speed.py's
    # profile): paid here, not inside the first trial; every trial seeds itself again
    seed_everything(cfg.seed, cfg.train.deterministic)
    return StudyContext(cfg, study, tracker, study.user_attrs[ATTR_PARENT], data, teachers, cache, progress=False, target=target)


def run_trials(ctx: StudyContext, n_trials: int, *, timeout_s: float | None = None, callbacks: Sequence[Callable] = (),
               population: int = 1) -> None:
    """Run ``n_trials`` trials in this process; a failing trial is FAIL and the study goes on.
    ``population`` > 1: in rounds of that many trials trained together (research.sweep.population).
    On Ctrl-C or SIGTERM no trial of this process is left RUNNING (see faults.recover)."""
    try:
        if population > 1:
            run_population(ctx, n_trials, population, timeout_s=timeout_s, callbacks=[_mark_failed_run(ctx.tracker), *callbacks])
        else:
            ctx.study.optimize(
                make_objective(ctx), n_trials=n_trials, timeout=timeout_s, catch=(Exception,),
                callbacks=[_mark_failed_run(ctx.tracker), stop_at_target(ctx), *callbacks],
            )
    except BaseException as e:
        interrupt = _interrupt_behind(e)
        if interrupt is None:
            raise
        # The objective closes its own trial; an interrupt that lands while Optuna asks or
        # tells does not reach it. A store error here must not hide the interrupt.
        with contextlib.suppress(Exception):
            recover(ctx.study, ctx.tracker, cause=f"interrupted ({interrupt or 'Ctrl-C'})", mine=True)
        if interrupt is e:
            raise
        raise interrupt from None


def _interrupt_behind(e: BaseException | None) -> KeyboardInterrupt | None:
    """The Ctrl-C/SIGTERM that ``e`` is, or that it was raised while handling. Optuna 5's
    optimize loop turns an interrupt during its tell into an UnboundLocalError (its
    ``finally`` reads a variable the interrupted call never set): the interrupt is what counts."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, KeyboardInterrupt):
            return e
        e, seen = e.__context__, seen + 1
    return None


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
    data: DataBundle | None = None,
    population: int = 1,
) -> None:
    """Run ``n_trials`` more trials with ``workers`` processes (each training ``population`` trials
    at a time, see research.sweep.population); a progress bar shows
    trials done, the best value so far and the time left. ``data``: the run data when the
    caller already loaded it (not loaded again). Raises WorkerError when a worker process
    exits with an error."""
    start_count = count_finished(study)
    started = started_trials(study)  # the workers' seeds derive from it (see sampler_seed)
    # Teachers first, once (trained, or found in MLflow by their key); workers then reuse them.
    target = start_count + n_trials
    ctx = prepare_context(cfg, study, progress=progress, data=data, target=target)
    bar = tqdm(total=n_trials, desc=f"study {cfg.name}", unit="trial", disable=not progress, dynamic_ncols=True)
    try:
        if workers <= 1:

            def tick(study: optuna.Study, trial: FrozenTrial) -> None:
                bar.update(1)
                _show_best(bar, study, cfg)

            run_trials(ctx, n_trials, timeout_s=timeout_s, callbacks=[tick], population=population)
        else:
            threads = max(1, (os.cpu_count() or 1) // workers)
            # Each worker in its own session: a terminal's Ctrl-C reaches only this process, which
            # forwards it once (a second one would make the workers exit without clean-up).
            procs = [
                subprocess.Popen([sys.executable, "-m", "research.cli", "study", "worker", cfg.name, "--storage", storage,
                                  "--n-trials", str(share), "--threads", str(threads), "--worker-index", str(index),
                                  "--started", str(started), "--target", str(target), "--population", str(population)]
                                 + (["--timeout", str(timeout_s)] if timeout_s else []), start_new_session=True)
                for index, share in enumerate(split_trials(n_trials, workers))
            ]
            try:
                while any(p.poll() is None for p in procs):
                    _poll(bar, study, cfg, start_count)
                    time.sleep(1.0)
            except BaseException as e:  # Ctrl-C, SIGTERM (research.signals.Terminated), or an error here
                signum = getattr(e, "signum", signal.SIGINT) if isinstance(e, KeyboardInterrupt) else signal.SIGTERM
                _stop_workers(procs, signum)
                # A worker killed after the grace period (or one that died on its own) left its
                # trial RUNNING: fail it now rather than at the next resume (which would also do it,
                # so a store error here must not hide the interrupt's exit code).
                with contextlib.suppress(Exception):
                    recover(study, ctx.tracker, cause=f"interrupted ({signal.Signals(signum).name} forwarded to the workers)")
                raise
            _poll(bar, study, cfg, start_count)
            bad = [p.returncode for p in procs if p.returncode != 0]
            if bad:
                recover(study, ctx.tracker, cause=f"worker exited with code {bad[0]}")
                raise WorkerError(f"{len(bad)} worker(s) exited with an error (exit codes {bad}; -N: killed by signal N). "
                                  f"`research study resume {cfg.name}` fails their trials and runs the rest")
    finally:
        bar.close()


def _stop_workers(procs: list[subprocess.Popen], signum: int, timeout_s: float = 120.0) -> None:
    """Forward ``signum`` to the workers still running and wait while they close their trials
    and runs; one that outlives ``timeout_s`` is killed (the caller's recover() fails its trial)."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signum)
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


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


def worker_main(name: str, storage: str, n_trials: int, threads: int, timeout_s: float | None, *, worker: int = 0, started: int = 0,
                target: int | None = None, population: int = 1) -> None:
    """One worker process: joins the study, reuses the teachers, runs its share.
    ``worker`` (its index) and ``started`` (trials started when the launch began)
    seed its sampler apart from the other workers' (see storage.sampler_seed)."""
    import torch

    torch.set_num_threads(threads)
    study, cfg = load_existing(name, storage, worker=worker, started=started)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"threads": threads})})
    ctx = prepare_context(cfg, study, progress=False, target=target)
    run_trials(ctx, n_trials, timeout_s=timeout_s, population=population)
