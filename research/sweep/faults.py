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
  (``optuna.storages.fail_stale_trials``, grace period set in open_storage);
  the same-host check above fails this host's dead workers at once, without
  waiting out the grace period.

A trial lost so (dead worker, or interrupted: Ctrl-C, SIGTERM) is FAIL with
user attr ``lost`` (the reason); its MLflow run, if still RUNNING, is ended
FAILED with the reason as its ``error`` tag. Lost trials do not count towards
the study's n_trials (they are no result), see storage.count_finished.
A lost trial that was an enqueued point (a published default) is enqueued
again, once: the copy carries ``requeue_of`` (the lost trial's number) and is
never enqueued again itself. A trial that failed on its own (NaN loss, a bad
point) is a result and is not repeated.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import optuna
from optuna.trial import TrialState

from ..process import process_gone
from ..process import process_identity as worker_identity
from ..tracking import Tracker
from .storage import ATTR_EXPERIMENT, ATTR_LOST, ATTR_PARENT

ATTR_WORKER = "worker"
ATTR_HEARTBEAT = "heartbeat"
ATTR_REQUEUE_OF = "requeue_of"
HEARTBEAT_S = 30.0
GRACE_S = 120.0  # four missed heartbeats: the same margin as Optuna's RDB grace period


def worker_gone(worker: dict[str, Any] | None, heartbeat: float | None, started: float, *, now: float | None = None) -> str | None:
    """Why a RUNNING trial's worker is gone, or None when it may be alive.

    worker: the trial's ``worker`` attr (None for a trial that never recorded one).
    heartbeat: its last heartbeat (epoch s), None when none yet; started: the trial's start (epoch s).
    """
    now = time.time() if now is None else now
    if worker and worker.get("host") == socket.gethostname():
        gone = process_gone(worker)
        return f"worker {gone}" if gone else None
    last = max(heartbeat or 0.0, started)
    if not worker and now - started > GRACE_S:  # the attr is set as the objective starts: it died before
        return f"no worker recorded {now - started:.0f} s after the trial started"
    if worker and now - last > GRACE_S:
        return f"worker on {worker.get('host')} (pid {worker.get('pid')}) sent no heartbeat for {now - last:.0f} s"
    return None


@contextlib.contextmanager
def heartbeat(trial: optuna.Trial, every_s: float = HEARTBEAT_S) -> Iterator[None]:
    """Record this process on the trial and beat every ``every_s`` s while the block runs."""
    trial.set_user_attr(ATTR_WORKER, worker_identity())
    trial.set_user_attr(ATTR_HEARTBEAT, time.time())
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            with contextlib.suppress(Exception):  # a missed beat only makes the trial look older
                trial.set_user_attr(ATTR_HEARTBEAT, time.time())

    thread = threading.Thread(target=beat, name=f"heartbeat-trial-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


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
    if isinstance(storage, optuna.storages.RDBStorage) and storage.is_heartbeat_enabled():
        with contextlib.suppress(Exception):  # another process may be failing the same trials
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
    _requeue_lost_defaults(study, trials, out)
    return out


def _close_runs(study: optuna.Study, tracker: Tracker, trials: list, out: Recovery) -> None:
    """End FAILED the RUNNING runs of the study's experiment left by a dead process: child runs
    of failed trials (Optuna's stale-trial check, or ours, failed the trial; nobody ended its
    run), and any other run (a teacher's) whose recorded process on this host is gone. The
    study's parent run is left alone: `resume` reopens it and ends it."""
    parent = study.user_attrs.get(ATTR_PARENT)
    experiment = study.user_attrs.get(ATTR_EXPERIMENT)
    if not parent or not experiment:
        return
    failed = {t.user_attrs.get("mlflow_run_id"): t for t in trials if t.state == TrialState.FAIL}
    for run in tracker.find_runs(experiment, status="RUNNING"):
        if run.info.run_id == parent:
            continue
        t = failed.get(run.info.run_id)
        if t is not None:
            reason = f"trial {t.number} lost: {t.user_attrs.get(ATTR_LOST) or 'its worker sent no heartbeat'}"
        else:
            gone = process_gone(tracker.run_process(run))
            if gone is None:
                continue
            reason = f"{run.data.tags.get('role', 'run')} run lost: its {gone}"
        tracker.close_run(run.info.run_id, "FAILED", {"error": reason, "error_type": "WorkerLost"})
        out.runs_closed.append(run.info.run_id)


def _requeue_lost_defaults(study: optuna.Study, trials: list, out: Recovery) -> None:
    done = {t.user_attrs.get(ATTR_REQUEUE_OF) for t in trials}
    for t in trials:
        lost = t.state == TrialState.FAIL and t.user_attrs.get(ATTR_LOST)
        if not lost or not t.user_attrs.get("enqueued") or ATTR_REQUEUE_OF in t.user_attrs or t.number in done:
            continue
        # The enqueued values live in fixed_params until the trial suggests them (it may have died first).
        params = t.system_attrs.get("fixed_params") or t.params
        study.enqueue_trial(params, user_attrs={"enqueued": True, ATTR_REQUEUE_OF: t.number}, skip_if_exists=False)
        out.requeued.append(t.number)
