"""Termination signals turned into the interrupt the code already cleans up after.

SIGTERM (``kill``, ``timeout``, SLURM, Kubernetes, ``docker stop``) and SIGHUP
(the terminal closed) are raised as :class:`Terminated`, a KeyboardInterrupt,
so every ``except KeyboardInterrupt`` / ``finally`` on the way out (MLflow runs
ended KILLED, Optuna trials FAIL, the study's parent run KILLED) runs exactly as
for Ctrl-C. A second signal while that clean-up runs exits at once
(``os._exit(128 + signum)``): whoever sends it means it.

Only the CLI installs this (``with interrupt_on_signals(): ...``); the library
only sees the exception.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator

HANDLED = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


class Terminated(KeyboardInterrupt):
    """A termination signal other than SIGINT, raised where the program was."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} received")
        self.signum = signum


def signal_of(e: BaseException) -> int:
    """The signal an interrupt stands for: its own for Terminated, SIGINT for a plain Ctrl-C."""
    return getattr(e, "signum", signal.SIGINT)


def exit_code(e: BaseException) -> int:
    """The shell's convention: 128 + the signal number (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + int(signal_of(e))


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """Within the block, the first SIGINT/SIGTERM/SIGHUP raises (KeyboardInterrupt or
    Terminated); any later one exits the process at once. Handlers are restored on exit.
    Outside the main thread (where Python cannot install handlers) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum, frame):
        if received:  # the clean-up of the first one is under way: stop now
            os._exit(128 + signum)
        received.append(signum)
        raise KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)

    previous = {s: signal.signal(s, handler) for s in HANDLED}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
