"""This process, as recorded where its work is (trials, MLflow runs), and whether a recorded one is gone.

A process is {host, pid, start}: ``start`` is its start time (Linux: clock
ticks since boot, from /proc), so a pid the system has given to a new process
is not taken for the old one. No Optuna or MLflow here.
"""

from __future__ import annotations

import os
import socket
from typing import Any


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
