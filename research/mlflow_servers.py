"""The `mlflow ui` and `mlflow server` processes that `research ui` and `research server`
start, wait for and stop (each in its own process group: they fork workers). MLflow's
Python API stays in research/tracking.py; this module only runs its command line."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

from .tracking import _local_artifact_root


def start_ui(uri: str, host: str = "127.0.0.1", port: int = 5000) -> subprocess.Popen:
    """``mlflow ui`` over ``uri`` in its own process group (it forks workers)."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port), "--workers", "1"]
    local = _local_artifact_root(uri)
    if local is not None:
        cmd += ["--default-artifact-root", local.as_uri()]
    env = dict(os.environ)
    # No GenAI job runner and its queue consumers: 3 processes instead of 11, faster start and stop.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return subprocess.Popen(cmd, start_new_session=True, env=env)


def start_server(backend_uri: str, artifacts: str | Path, host: str = "127.0.0.1", port: int = 5000, *, workers: int = 2) -> subprocess.Popen:
    """``mlflow server`` for several machines: runs in ``backend_uri`` (PostgreSQL, e.g.
    ``postgresql://u:pw@db/mlflow``), artifacts proxied over HTTP into ``artifacts`` (a folder
    or a URI), so workers need only ``MLFLOW_TRACKING_URI=http://host:port``. Its own process
    group; stop it with stop_ui, wait for it with wait_for_ui."""
    art = Path(artifacts).resolve().as_uri() if "://" not in str(artifacts) else str(artifacts)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri, "--artifacts-destination", art,
           "--host", host, "--port", str(port), "--workers", str(workers)]
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    return subprocess.Popen(cmd, start_new_session=True, env=env)


def wait_for_ui(proc: subprocess.Popen, host: str, port: int, timeout_s: float = 90.0) -> bool:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    return False


def stop_ui(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    """Stop the UI and every worker it forked."""
    import signal

    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
