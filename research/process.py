"""This process, as recorded where its work is (trials, MLflow runs), and whether a recorded one is gone.

A process is {host, pid, start}: ``start`` is its start time (Linux: clock
ticks since boot, from /proc), so a pid the system has given to a new process
is not taken for the old one. Another host's pids cannot be checked: a process
there beats (a trial's ``heartbeat`` attr, an MLflow run's ``heartbeat`` tag)
every HEARTBEAT_S, and is gone once its last beat is older than GRACE_S.
No Optuna or MLflow here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from typing import Any, Callable, Iterator

HEARTBEAT_S = 30.0
GRACE_S = 120.0  # four missed heartbeats: the same margin as Optuna's RDB grace period (see sweep.storage)
# Test-only fault injection, see kill_point.
KILL_AT_ENV = "RESEARCH_TEST_KILL_AT"


def start_time(pid: int) -> float | None:
    """The process's start time in clock ticks since boot (Linux /proc), None where unknown.
    Two processes that reuse one pid differ in it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # Field 22; the command name (field 2, in parentheses) may itself hold spaces.
    return float(stat.rsplit(b")", 1)[1].split()[19])


def process_identity() -> dict[str, Any]:
    """This process as recorded on its trials: {host, pid, start}."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start": start_time(os.getpid())}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def process_gone(identity: dict[str, Any]) -> str | None:
    """Why the recorded process is gone, or None when it may be alive (alive here, or on another host)."""
    if identity.get("host") != socket.gethostname() or not identity.get("pid"):
        return None
    pid = int(identity["pid"])
    if not pid_alive(pid):
        return f"process {pid} on {identity['host']} is gone"
    now = start_time(pid)
    if identity.get("start") not in (None, "", "None") and now is not None and now != float(identity["start"]):
        return f"process {pid} on {identity['host']} is gone (its pid now belongs to another process)"
    return None


def heartbeat_age(last: float | None, started: float, now: float) -> float | None:
    """Seconds since the last sign of life (the last beat, else the start; epoch s) when that is
    more than GRACE_S, else None (it may be alive)."""
    age = now - max(last or 0.0, started)
    return age if age > GRACE_S else None


def kill_point(name: str) -> None:
    """Test-only: SIGKILL this process here when ``$RESEARCH_TEST_KILL_AT`` is ``name``.

    The fault suite's `kill -9` at an exact place that polling from outside cannot hit
    reliably (tests/test_study_faults.py). Unset (always, outside those tests) it does nothing.
    Points: ``log_weights`` (a trial's student weights being logged, the end of a trial)."""
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


@contextlib.contextmanager
def beating(beat: Callable[[], None], every_s: float, name: str) -> Iterator[None]:
    """Call ``beat()`` every ``every_s`` s in a daemon thread (it dies with the process) while
    the block runs; a failing beat is skipped: a missed beat only makes the work look older."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            with contextlib.suppress(Exception):
                beat()

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
