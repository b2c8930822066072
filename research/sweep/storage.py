"""Where a study lives and how its trials are drawn: storages, samplers, pruners, seeds.

Storage: a journal file (default ``mlruns/optuna/journal.log``, shared by the
processes of one machine) or a database URL (PostgreSQL for several machines).

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

import contextlib
import json
import os
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState

from ..config import StudyConfig
from ..tracking import DEFAULT_DIR, mask_url

DEFAULT_JOURNAL = DEFAULT_DIR / "optuna" / "journal.log"
# Study user attributes: the config it was created with (and its hash, which a joiner must
# match), and where its MLflow side lives.
ATTR_CONFIG = "config_yaml"
ATTR_CONFIG_HASH = "config_hash"
ATTR_PARENT = "mlflow_parent_run_id"
ATTR_EXPERIMENT = "mlflow_experiment"
ATTR_TRACKING_URI = "mlflow_tracking_uri"
# Trial user attribute: why a trial was lost (its worker died, or it was interrupted); see faults.py.
ATTR_LOST = "lost"
# Study user attribute ``lost_trial_<number>``: the same for a trial that Optuna's own heartbeat check
# failed (PostgreSQL; it may run in any worker before its next trial), marked by its callback: a
# finished trial takes no more attributes. One key per trial, so concurrent marks do not clash.
ATTR_LOST_TRIAL = "lost_trial_"
OPTUNA_GRACE_S = 120  # Optuna's heartbeat grace period (s); the same as faults.GRACE_S
FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)

optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own progress bar says what matters


class StudyError(RuntimeError):
    """A study cannot be run as asked (exists with another config, not found, ...)."""


def storage_url(explicit: str | None = None) -> str:
    """The study storage: an explicit URL or journal path, else the journal file under ./mlruns."""
    return explicit or str(DEFAULT_JOURNAL)


def open_storage(url: str, *, create: bool = True) -> optuna.storages.BaseStorage:
    """PostgreSQL/MySQL/SQLite URLs go to RDBStorage (with heartbeats, so a dead
    worker's trial is failed rather than left RUNNING); anything else is a journal file.
    Raises StudyError when ``create`` is false and the journal file does not exist."""
    if "://" in url:
        # No connection pool on a database server: a connection is opened per storage call and
        # closed after it. A pool keeps its idle connections for as long as the storage object
        # lives; a process that opens studies again and again (a notebook, the test suite, a
        # long `study run`) then held dozens, and the server refused new workers once its
        # max_connections were taken. A trial makes a few calls per epoch: the cost is small.
        import sqlalchemy.pool

        engine_kwargs = {} if url.startswith("sqlite") else {"poolclass": sqlalchemy.pool.NullPool}
        with warnings.catch_warnings():  # heartbeats are marked experimental, and are what we want
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=30, grace_period=OPTUNA_GRACE_S,
                                              heartbeat_stale_trial_callback=_mark_stale_trial_lost)
    path = Path(url)
    if not create and not path.exists():
        raise StudyError(f"no study storage at {path} (run a study first, or pass --storage)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(AtomicJournalFileBackend(str(path)))


class AtomicJournalFileBackend(optuna.storages.journal.JournalFileBackend):
    """Optuna's journal file, whose appends are all-or-nothing.

    Optuna appends a batch of JSON lines and tolerates a last line cut short (an append
    in progress), but a write that fails half-way (a full disk) leaves such a line behind,
    and the next append glues onto it: one corrupt line, and the journal no longer loads.
    Here a failed append truncates the file back to its size before the append, under the
    same lock, then raises the write's error, so the journal opens as it was."""

    def append_logs(self, logs: list[dict]) -> None:
        # Optuna's own append (same lock, same JSON lines, flush + fsync), with the roll-back around
        # it; it cannot be called as super() inside the lock, which is not reentrant.
        from optuna.storages.journal._file import get_lock_file

        text = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
        with get_lock_file(self._lock):
            before = os.path.getsize(self._file_path) if os.path.exists(self._file_path) else 0
            try:
                with open(self._file_path, "ab") as f:
                    f.write(text.encode("utf-8"))
                    f.flush()
                    os.fsync(f.fileno())
            except OSError:
                with contextlib.suppress(OSError):
                    os.truncate(self._file_path, before)
                raise


def check_storage(url: str) -> None:
    """Fail early, in one line (StudyError), when the storage cannot be opened."""
    try:
        store = open_storage(url)
    except Exception as e:  # driver errors differ by backend; the first line says what is wrong
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise StudyError(f"storage {mask_url(url)}: cannot be opened: {mask_url(first)}") from None
    if isinstance(store, optuna.storages.RDBStorage):
        store.engine.dispose()  # a probe: its pooled connections are not kept (a shared server has few slots)


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


def _mark_stale_trial_lost(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Optuna's callback for a trial its heartbeat check has just failed: mark it lost (ATTR_LOST_TRIAL)."""
    study.set_user_attr(f"{ATTR_LOST_TRIAL}{trial.number}", f"its worker sent no Optuna heartbeat for over {OPTUNA_GRACE_S} s")


def lost_reason(trial: optuna.trial.FrozenTrial, study_attrs: dict) -> str | None:
    """Why a finished trial was lost (no result), None when it was not. ``study_attrs``: the
    study's user attrs (read once by the caller: a storage round trip)."""
    return trial.user_attrs.get(ATTR_LOST) or study_attrs.get(f"{ATTR_LOST_TRIAL}{trial.number}")


def count_finished(study: optuna.Study) -> int:
    """Trials that are COMPLETE, PRUNED or FAIL, less the lost ones (a dead worker's,
    an interrupted one: no result, so they do not use up the study's n_trials)."""
    attrs = study.user_attrs
    return sum(not lost_reason(t, attrs) for t in study.get_trials(deepcopy=False, states=FINISHED_STATES))


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
    if not cfg.search_encoder().conditional:
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
    # A conditional (define-by-run) space: group=True models each set of parameters that
    # occur together jointly, instead of the intersection of all trials' spaces (which
    # would leave every conditional parameter to independent sampling).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def make_pruner(cfg: StudyConfig) -> optuna.pruners.BasePruner:
    """The study's pruner; epochs are its steps (``n_warmup_steps`` epochs before a trial may be pruned),
    counted on across a trial's repeats or folds (research.sweep.objective): R x epochs steps in all."""
    p = cfg.pruner
    if p.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, p.n_warmup_steps), max_resource=cfg.train.epochs * cfg.search.measurements)
    return optuna.pruners.NopPruner()
