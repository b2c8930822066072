"""Trials whose process is gone: found, failed, their MLflow runs closed, defaults enqueued again.

Every running trial records its worker (user attr ``worker``: host, pid and the
process's start time, so a reused pid is not taken for the dead worker) and a
heartbeat (user attr ``heartbeat``, seconds since the epoch, every
HEARTBEAT_S). ``study run`` and ``study resume`` call :func:`recover` before
their trials start; it fails each RUNNING trial whose worker is gone:

- on this host: its pid is not alive, or is alive with another start time;
- on another host (a journal file on a shared disk): its heartbeat is older
  than GRACE_S (another host's pids cannot be checked);
- PostgreSQL: Optuna's own heartbeats fail stale trials of any host
  (``optuna.storages.fail_stale_trials``, grace period set in open_storage;
  any worker's optimize runs it too), and its callback marks them lost (study
  attr ``lost_trial_<number>``, storage.lost_reason); the same-host check above
  fails this host's dead workers at once, without waiting out the grace period.

A trial lost so (dead worker, or interrupted: Ctrl-C, SIGTERM) is FAIL with
user attr ``lost`` (the reason); its MLflow run, if still RUNNING, is ended
FAILED with the reason as its ``error`` tag. Lost trials do not count towards
the study's n_trials (they are no result), see storage.count_finished.

MLflow runs with no trial (a teacher's) record their process too (``process.*``
tags) and beat (``heartbeat`` tag, see tracking.Tracker.run): one left RUNNING
is ended FAILED when its process on this host is gone, or, on another host,
when its last beat is older than GRACE_S (the trials' rule).

A lost trial that was an enqueued point (a published default) is enqueued
again, once: the copy carries ``requeue_of`` (the lost trial's number) and is
never enqueued again itself. Several processes may recover one study at once
(two machines resuming it): the check for an existing copy and the enqueue run
under :func:`study_lock`, so one copy is made in all. A trial that failed on
its own (NaN loss, a bad point) is a result and is not repeated.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import optuna
import sqlalchemy
from optuna.storages.journal._file import JournalFileOpenLock, get_lock_file
from optuna.trial import TrialState

from ..process import GRACE_S, HEARTBEAT_S, beating, heartbeat_age, process_gone
from ..process import process_identity as worker_identity
from ..tracking import Tracker
from .storage import ATTR_EXPERIMENT, ATTR_LOST, ATTR_PARENT, lost_reason

ATTR_WORKER = "worker"
ATTR_HEARTBEAT = "heartbeat"
ATTR_REQUEUE_OF = "requeue_of"


def worker_gone(worker: dict[str, Any] | None, heartbeat: float | None, started: float, *, now: float | None = None) -> str | None:
    """Why a RUNNING trial's worker is gone, or None when it may be alive.

    worker: the trial's ``worker`` attr (None for a trial that never recorded one).
    heartbeat: its last heartbeat (epoch s), None when none yet; started: the trial's start (epoch s).
    """
    now = time.time() if now is None else now
    if worker and worker.get("host") == socket.gethostname():
        gone = process_gone(worker)
        return f"worker {gone}" if gone else None
    if not worker and now - started > GRACE_S:  # the attr is set as the objective starts: it died before
        return f"no worker recorded {now - started:.0f} s after the trial started"
    age = heartbeat_age(heartbeat, started, now) if worker else None
    if age is not None:
        return f"worker on {worker.get('host')} (pid {worker.get('pid')}) sent no heartbeat for {age:.0f} s"
    return None


def run_gone(run: Any, *, now: float | None = None) -> str | None:
    """Why the process that owns a RUNNING MLflow run (not a trial's) is gone, or None when it
    may be alive. This host: its recorded pid is gone (or reused). Another host: the run's last
    heartbeat (HEARTBEAT_TAG, else its start) is older than GRACE_S; a run from another host
    that does not beat (made by an older version) cannot be judged and is left alone."""
    now = time.time() if now is None else now
    owner = Tracker.run_process(run)
    if owner.get("host") == socket.gethostname():
        gone = process_gone(owner)
        return f"its {gone}" if gone else None
    beat = Tracker.run_heartbeat(run)
    if not owner or beat is None:
        return None
    age = heartbeat_age(beat, run.info.start_time / 1000.0, now)
    if age is None:
        return None
    return f"its process {owner.get('pid')} on {owner.get('host')} sent no heartbeat for {age:.0f} s (grace {GRACE_S:.0f} s)"


@contextlib.contextmanager
def heartbeat(trial: optuna.Trial, every_s: float = HEARTBEAT_S) -> Iterator[None]:
    """Record this process on the trial and beat every ``every_s`` s while the block runs."""
    trial.set_user_attr(ATTR_WORKER, worker_identity())
    trial.set_user_attr(ATTR_HEARTBEAT, time.time())
    with beating(lambda: trial.set_user_attr(ATTR_HEARTBEAT, time.time()), every_s, f"heartbeat-trial-{trial.number}"):
        yield


@dataclass
class Recovery:
    """What :func:`recover` did: trial numbers failed, MLflow runs closed, trials enqueued again."""

    failed: list[int] = field(default_factory=list)
    runs_closed: list[str] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)


def recover(study: optuna.Study, tracker: Tracker, *, cause: str | None = None, mine: bool = False) -> Recovery:
    """Fail the RUNNING trials whose worker is gone, close their MLflow runs FAILED,
    and enqueue lost defaults again once (see the module docstring). ``cause``: what the
    caller knows of why the workers are gone (e.g. the signal it forwarded), put before
    the reason in the ``lost`` attr. ``mine``: also fail this process's own RUNNING trials
    (it is on its way out: an interrupt that landed while Optuna asked or told, outside the
    objective's clean-up, left one RUNNING)."""
    out = Recovery()
    storage = study._storage
    # Optuna's heartbeats (PostgreSQL): it checks itself whether the storage has them. (An
    # `isinstance(storage, RDBStorage)` test never held: a loaded study's storage is Optuna's cache.)
    with contextlib.suppress(Exception), warnings.catch_warnings():  # another process may be failing the same trials
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are what we want
        optuna.storages.fail_stale_trials(study)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = t.datetime_start.timestamp() if t.datetime_start else time.time()
        worker = t.user_attrs.get(ATTR_WORKER)
        if mine and worker == worker_identity():
            reason = f"its process {os.getpid()} stopped"
        else:
            reason = worker_gone(worker, t.user_attrs.get(ATTR_HEARTBEAT), started)
        if reason is None:
            continue
        reason = f"{cause}; {reason}" if cause else reason
        try:
            storage.set_trial_user_attr(t._trial_id, ATTR_LOST, reason)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished (or another process failed it) meanwhile
        out.failed.append(t.number)
    trials = study.get_trials(deepcopy=False)
    _close_runs(study, tracker, trials, out)
    with study_lock(study, "requeue"):
        _requeue_lost_defaults(study, study.get_trials(deepcopy=False), out)  # read again, under the lock
    return out


def storage_behind_cache(storage: optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """The storage itself: Optuna wraps an RDBStorage in its _CachedStorage (``_backend``).
    (A JournalStorage has a ``_backend`` too, its file: not a storage; a plain getattr took it.)"""
    from optuna.storages._cached_storage import _CachedStorage

    return storage._backend if isinstance(storage, _CachedStorage) else storage


@contextlib.contextmanager
def study_lock(study: optuna.Study, purpose: str) -> Iterator[None]:
    """One process at a time in the block, among all processes and machines that share the
    study's storage: PostgreSQL, a transaction-level advisory lock (released by the server if
    the process dies); a journal file or SQLite, a lock file beside it (Optuna's O_EXCL lock,
    safe on NFS; a dead holder's lock is broken after 30 s). Other databases (MySQL) get no lock.
    ``purpose`` names the lock (different purposes do not exclude one another)."""
    backend = storage_behind_cache(study._storage)
    path = None
    if isinstance(backend, optuna.storages.RDBStorage):
        engine = backend.engine
        if engine.dialect.name == "postgresql":
            digest = hashlib.blake2b(f"research:{purpose}:{study.study_name}".encode(), digest_size=8).digest()
            with engine.begin() as conn:  # the lock is held until this transaction ends
                conn.execute(sqlalchemy.text("select pg_advisory_xact_lock(:key)"), {"key": int.from_bytes(digest, "big", signed=True)})
                yield
            return
        if engine.dialect.name == "sqlite" and engine.url.database:
            path = engine.url.database
    elif isinstance(backend, optuna.storages.JournalStorage):
        path = getattr(backend._backend, "_file_path", None)
    if path is None:
        yield
        return
    with get_lock_file(JournalFileOpenLock(f"{path}.{purpose}")):
        yield


def _close_runs(study: optuna.Study, tracker: Tracker, trials: list, out: Recovery) -> None:
    """End FAILED the RUNNING runs of the study's experiment left by a dead process: child runs
    of failed trials (Optuna's stale-trial check, or ours, failed the trial; nobody ended its
    run), and any other run (a teacher's) whose process is gone (:func:`run_gone`). The
    study's parent run is left alone: `resume` reopens it and ends it."""
    parent = study.user_attrs.get(ATTR_PARENT)
    experiment = study.user_attrs.get(ATTR_EXPERIMENT)
    if not parent or not experiment:
        return
    failed = {t.user_attrs.get("mlflow_run_id"): t for t in trials if t.state == TrialState.FAIL}
    attrs = study.user_attrs
    for run in tracker.find_runs(experiment, status="RUNNING"):
        if run.info.run_id == parent:
            continue
        t = failed.get(run.info.run_id)
        if t is not None:
            reason = f"trial {t.number} lost: {lost_reason(t, attrs) or 'its worker sent no heartbeat'}"
        else:
            gone = run_gone(run)
            if gone is None:
                continue
            reason = f"{run.data.tags.get('role', 'run')} run lost: {gone}"
        tracker.close_run(run.info.run_id, "FAILED", {"error": reason, "error_type": "WorkerLost"})
        out.runs_closed.append(run.info.run_id)


def _requeue_lost_defaults(study: optuna.Study, trials: list, out: Recovery) -> None:
    done = {t.user_attrs.get(ATTR_REQUEUE_OF) for t in trials}
    attrs = study.user_attrs
    for t in trials:
        lost = t.state == TrialState.FAIL and lost_reason(t, attrs)
        if not lost or not t.user_attrs.get("enqueued") or ATTR_REQUEUE_OF in t.user_attrs or t.number in done:
            continue
        # The enqueued values live in fixed_params until the trial suggests them (it may have died first).
        params = t.system_attrs.get("fixed_params") or t.params
        study.enqueue_trial(params, user_attrs={"enqueued": True, ATTR_REQUEUE_OF: t.number}, skip_if_exists=False)
        out.requeued.append(t.number)
