"""All MLflow calls of the workbench, in one place.

Runs are created and ended through ``MlflowClient`` with explicit run ids,
never through MLflow's per-thread active-run stack, so several workers (or
threads) can log child runs of one parent safely. By default everything
lives under ``./mlruns``: a SQLite database and the artifacts beside it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import subprocess
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import mlflow
import mlflow.pytorch
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.tracking import MlflowClient

from .process import HEARTBEAT_S, beating, kill_point, process_identity

# MLflow warns on every pickle-format save; we choose pickle on purpose (see RunHandle.log_model).
logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)
# Artifact download bars would interleave with the training bars.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

DEFAULT_DIR = Path("mlruns")
PARENT_TAG = "mlflow.parentRunId"
PROCESS_TAG = "process"  # process.host, process.pid, process.start: who owns a run
# Epoch seconds of the owner's last sign of life, every HEARTBEAT_S while Tracker.run's block
# runs: a run left RUNNING on another host (whose pid cannot be checked) is stale once it is
# older than process.GRACE_S (research.sweep.faults closes it).
HEARTBEAT_TAG = "heartbeat"
MAX_PARAM_LEN = 6000


# user:password@ in a URL's authority (postgresql://u:pw@host/db, https://u:pw@host); the password
# may hold anything but '@', '/' and whitespace once the URL is written out.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)(?P<password>[^@/\s]+)(?P<tail>@)")
MASK = "***"


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (``postgresql://u:***@host/db``);
    anything without one is returned as is. Use it wherever a URL is printed or logged."""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['tail']}", url)


def mask_secrets(text: str) -> str:
    """Every URL password in a free text (a config file, an error message) masked as by mask_url."""
    return mask_url(text)


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the SQLite store under ./mlruns."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{(DEFAULT_DIR / 'mlflow.db').resolve()}"


def _local_artifact_root(uri: str) -> Path | None:
    """Artifacts of a local SQLite store sit beside the database, in artifacts/."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).resolve().parent / "artifacts"
    return None


@functools.cache  # once per process: the code a process runs is the commit it imported (a run each trial spawned git)
def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class RunKilled(Exception):
    """Raised inside a run to end it as KILLED (e.g. an early-stopped trial)."""


class TrackingWriteError(RuntimeError):
    """The tracking store cannot be written: a full disk, a read-only ``mlruns/`` or database,
    no permission. One line naming the store and the system's reason; the store itself is left
    as it was (SQLite rolls the failed transaction back), so it opens again afterwards."""


# errno values that mean "this place cannot take writes", whatever wrote there
_WRITE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, getattr(errno, "EDQUOT", errno.ENOSPC)}
# SQLite's messages for the same conditions, as SQLAlchemy and MLflow pass them on
_SQLITE_WRITE_MESSAGES = ("readonly database", "database or disk is full", "disk i/o error", "unable to open database file")


def write_error_reason(e: BaseException) -> str | None:
    """The one-line reason when ``e`` (or an exception it was raised from) is a failed write to
    storage (see :class:`TrackingWriteError`), else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
            where = f": {e.filename}" if e.filename else ""
            return f"{e.strerror or e}{where}"
        text = str(e).lower()
        for m in _SQLITE_WRITE_MESSAGES:
            if m in text:
                return f"SQLite: {m}"
        e = e.__cause__ or e.__context__
    return None


# Extra waits (s) when SQLite answers "database is locked": several processes (study workers,
# all closing their runs at once on a signal) write one store, and SQLite's own busy wait
# (5 s) can run out on a loaded machine. A locked write changed nothing, so it is retried.
_LOCKED_RETRY_DELAYS = (0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0, 2.0, 2.0)


def _is_locked(e: BaseException | None) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if "database is locked" in str(e).lower():
            return True
        e = e.__cause__ or e.__context__
    return False


def _retrying_locked(call):
    """``call()``, retried while the store is locked (see _LOCKED_RETRY_DELAYS)."""
    for delay in _LOCKED_RETRY_DELAYS:
        try:
            return call()
        except Exception as e:
            if not _is_locked(e):
                raise
            time.sleep(delay)
    return call()


def _store_errors(method):
    """Turns a failed write to the store into :class:`TrackingWriteError` naming the store;
    a write that found the store locked by another process is retried first."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return _retrying_locked(lambda: method(self, *args, **kwargs))
        except TrackingWriteError:
            raise
        except Exception as e:
            reason = write_error_reason(e)
            if reason is None:
                raise
            uri = getattr(self, "uri", None) or getattr(getattr(self, "client", None), "tracking_uri", None) or "(unknown)"
            uri = mask_url(uri)  # never a password in a message
            raise TrackingWriteError(f"cannot write to the tracking store {uri}: {reason} "
                                     "(free disk space or make it writable, or give another tracking.uri)") from e

    return wrapper


def _timed(method):
    """Adds the call's wall time to ``self.seconds``: the share of a run spent logging; a failed
    write to the store becomes :class:`TrackingWriteError`."""

    @functools.wraps(method)
    @_store_errors
    def wrapper(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0

    return wrapper


@dataclass
class RunHandle:
    """One MLflow run, logged by id (thread-safe, no active-run stack)."""

    client: MlflowClient
    run_id: str
    experiment_id: str
    seconds: float = 0.0  # time spent in this handle's MLflow calls

    @_timed
    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)

    @_timed
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i : i + 1000], synchronous=True)

    @_timed
    def log_history(self, epochs: Sequence[dict[str, float]], *, final: dict[str, float] | None = None,
                    final_step: int | None = None) -> None:
        """A whole metric history in as few calls as MLflow allows (``log_batch``, at most 1000
        metrics a call): ``epochs[i]`` at step ``i + 1``, then ``final`` at ``final_step``
        (default: the last epoch's, 0 without epochs). The same values and steps as one
        :meth:`log_metrics` call per epoch and one for ``final``, in one round trip per 1000.

        Timestamps rise by 1 ms per epoch (then ``final``), the last one now: the store keeps an
        entry equal in key, step, value and timestamp only once, so a final value equal to the
        last epoch's (the same validation accuracy at the same step) stays a second entry, as
        it was when logged by a call of its own; and sorting by time gives the logging order."""
        rows = [(step, m) for step, m in enumerate(epochs, 1)]
        if final is not None:
            rows.append((final_step if final_step is not None else len(epochs), final))
        items = [(k, float(v), step) for step, m in rows for k, v in m.items() if v is not None]
        if not items:
            return
        now = int(time.time() * 1000)
        start = now - (len(rows) - 1)
        times = [start + i for i, (_, m) in enumerate(rows) for v in m.values() if v is not None]
        metrics = [Metric(k, v, t, step) for (k, v, step), t in zip(items, times)]
        for i in range(0, len(metrics), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000], synchronous=True)

    @_timed
    def set_tags(self, tags: dict[str, Any]) -> None:
        items = [RunTag(k, mask_secrets(str(v))) for k, v in tags.items() if v is not None]
        if items:
            self.client.log_batch(self.run_id, tags=items, synchronous=True)

    @_timed
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.suffix in _TEXT_SUFFIXES and path.is_file():
            text = path.read_text(errors="replace")
            if mask_secrets(text) != text:  # a config file with a password in a URL: log it masked
                self.client.log_text(self.run_id, mask_secrets(text), f"{artifact_path}/{path.name}" if artifact_path else path.name)
                return
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    @_timed
    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, mask_secrets(text), artifact_file)

    @_timed
    def log_figure(self, figure: Any, artifact_file: str) -> None:
        self.client.log_figure(self.run_id, figure, artifact_file)

    @_timed
    def log_model(self, model: Any, artifact_path: str = "model", *, input_example: Any = None) -> None:
        """The whole module as an MLflow PyTorch model (pickle format: pruned or quantized
        modules reload as they are, which a state_dict of the original class cannot do)."""
        import copy

        import torch

        from .models.outputs import model_device_dtype, to_model_input

        if model_device_dtype(model)[0].type != "cpu":
            # Logged from the CPU: a model pickled on a GPU loads only where that GPU exists, and
            # the training loop leaves it on the GPU. A copy, so the caller's model stays put.
            model = copy.deepcopy(model).cpu()
        signature = None
        if input_example is not None:
            with torch.no_grad():
                was = model.training
                model.eval()
                try:
                    out = model(to_model_input(input_example, model))
                finally:
                    model.train(was)
            if isinstance(out, torch.Tensor):  # a tuple/dict output has no one-tensor signature
                signature = mlflow.models.infer_signature(input_example.cpu().numpy(), out.detach().float().cpu().numpy())
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / artifact_path
            mlflow.pytorch.save_model(
                model,
                str(local),
                serialization_format="pickle",
                signature=signature,
                pip_requirements=_pip_requirements(),
            )
            self.client.log_artifacts(self.run_id, str(local), artifact_path)

    @_timed
    def log_deployable(self, compressed: Any, artifact_dir: str = "deployable") -> None:
        """The compressed model's deployable file (compact sparse, ONNX, ExecuTorch, ...) as written,
        named ``model`` + its format's suffix."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"model{compressed.format.suffix}"
            compressed.save(path)
            self.client.log_artifact(self.run_id, str(path), artifact_dir)

    @_timed
    def log_state_dict(self, model: Any, artifact_file: str = "weights.pt") -> None:
        import torch

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / artifact_file
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)  # loadable without the GPU
            kill_point("log_weights")  # test-only (the fault suite's kill -9 while a trial logs its model)
            self.client.log_artifact(self.run_id, str(path))


class Tracker:
    """Entry point for tracking: experiments, runs, lookups and model loading."""

    heartbeat_s: float = HEARTBEAT_S  # how often a run of Tracker.run beats (HEARTBEAT_TAG)

    def __init__(self, uri: str | None = None) -> None:
        self.uri = uri or default_tracking_uri()
        self.client = None
        self._open()

    @_store_errors
    def _open(self) -> None:
        root = _local_artifact_root(self.uri)
        if root is not None:
            root.parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)

    @_store_errors
    def experiment_id(self, name: str, *, create: bool = True) -> str | None:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        if not create:
            return None
        root = _local_artifact_root(self.uri)
        location = (root / name).as_uri() if root is not None else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            # Another worker created it between our lookup and create.
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    @_store_errors
    def start(self, experiment: str, run_name: str, *, tags: dict[str, Any] | None = None, parent_run_id: str | None = None) -> RunHandle:
        t0 = time.perf_counter()
        exp_id = self.experiment_id(experiment)
        # The process that owns the run: a run left RUNNING by a dead one can be told from a live one's.
        me = process_identity()
        all_tags = {"mlflow.source.git.commit": git_commit(), **{f"{PROCESS_TAG}.{k}": v for k, v in me.items()}, **(tags or {})}
        if parent_run_id:
            all_tags[PARENT_TAG] = parent_run_id
        run = self.client.create_run(exp_id, run_name=run_name, tags={k: str(v) for k, v in all_tags.items() if v is not None})
        return RunHandle(self.client, run.info.run_id, exp_id, seconds=time.perf_counter() - t0)  # its creation counts as logging

    @_store_errors
    def end(self, handle: RunHandle, status: str = "FINISHED") -> None:
        self.client.set_terminated(handle.run_id, status)

    @staticmethod
    def run_process(run) -> dict[str, str]:
        """The {host, pid, start} recorded on a run by start() (empty for runs made elsewhere)."""
        prefix = f"{PROCESS_TAG}."
        return {k.removeprefix(prefix): v for k, v in run.data.tags.items() if k.startswith(prefix)}

    @staticmethod
    def run_heartbeat(run) -> float | None:
        """The run's last heartbeat (epoch s), None for a run that does not beat (made by
        start() alone, such as a study's parent run, or by an older version)."""
        value = run.data.tags.get(HEARTBEAT_TAG)
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None

    @_store_errors
    def _beat(self, run_id: str) -> None:
        # Not through RunHandle.set_tags: a beat is no part of the run's tracking time.
        self.client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time():.0f}")

    @contextlib.contextmanager
    def _beating(self, run_id: str) -> Iterator[None]:
        """Beat every heartbeat_s in a daemon thread while the block runs (dies with the process)."""
        with beating(lambda: self._beat(run_id), self.heartbeat_s, f"heartbeat-run-{run_id[:8]}"):
            yield

    def close_run(self, run_id: str, status: str, tags: dict[str, str]) -> None:
        """End a run another process left open (it died): ``tags`` say why, then ``status``."""
        handle = self.handle(run_id)
        self._safe_tag(handle, tags)
        self.end(handle, status)

    def handle(self, run_id: str) -> RunHandle:
        """A handle on an existing run (e.g. a study's parent run from another process)."""
        run = self.client.get_run(run_id)
        return RunHandle(self.client, run_id, run.info.experiment_id)

    @_store_errors
    def reopen(self, run_id: str) -> RunHandle:
        self.client.update_run(run_id, status="RUNNING")
        return self.handle(run_id)

    def has_artifact(self, run_id: str, path: str) -> bool:
        return any(a.path == path for a in self.client.list_artifacts(run_id))

    def load_state_dict(self, run_id: str, artifact_file: str = "weights.pt") -> dict:
        import torch

        with tempfile.TemporaryDirectory() as tmp:
            local = self.client.download_artifacts(run_id, artifact_file, tmp)
            return torch.load(local, weights_only=True, map_location="cpu")

    @contextlib.contextmanager
    def run(
        self,
        experiment: str,
        run_name: str,
        *,
        tags: dict[str, Any] | None = None,
        parent_run_id: str | None = None,
        killed_on: Sequence[type[BaseException]] = (),
    ) -> Iterator[RunHandle]:
        """A run that ends FINISHED, KILLED (``RunKilled``, ``killed_on`` types,
        Ctrl-C) or FAILED with the error as a tag, whatever happens inside. While the block
        runs the run beats (HEARTBEAT_TAG, every ``heartbeat_s``), so it can be told stale on
        another host when its process died without ending it."""
        handle = self.start(experiment, run_name, tags={**(tags or {}), HEARTBEAT_TAG: f"{time.time():.0f}"},
                            parent_run_id=parent_run_id)
        try:
            with self._beating(handle.run_id):  # stopped before the run ends, below
                yield handle
        except (RunKilled, KeyboardInterrupt, *killed_on) as e:
            self._safe_tag(handle, {"killed_reason": _one_line(e) or type(e).__name__})
            self._safe_end(handle, "KILLED")
            raise
        except BaseException as e:
            self._safe_tag(handle, {"error": _one_line(e), "error_type": type(e).__name__})
            self._safe_text(handle, traceback.format_exc(), "error.txt")  # masked by log_text
            self._safe_end(handle, "FAILED")
            raise
        else:
            self.end(handle, "FINISHED")

    def _safe_end(self, handle: RunHandle, status: str) -> None:
        # The store may be what failed (read-only, full): its error must not hide the run's own.
        with contextlib.suppress(TrackingWriteError):
            self.end(handle, status)

    def _safe_tag(self, handle: RunHandle, tags: dict[str, str]) -> None:
        with contextlib.suppress(Exception):
            handle.set_tags(tags)

    def _safe_text(self, handle: RunHandle, text: str, name: str) -> None:
        with contextlib.suppress(Exception):
            handle.log_text(text, name)

    def find_runs(self, experiment: str, *, tags: dict[str, str] | None = None, status: str | None = "FINISHED", parent_run_id: str | None = None, max_results: int = 1000) -> list:
        exp_id = self.experiment_id(experiment, create=False)
        if exp_id is None:
            return []
        clauses = [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()]
        if status:
            clauses.append(f"attributes.status = '{status}'")
        if parent_run_id:
            clauses.append(f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
        return list(
            self.client.search_runs(
                [exp_id], " and ".join(clauses), ViewType.ACTIVE_ONLY, max_results=max_results, order_by=["attributes.start_time DESC"]
            )
        )

    def get_run(self, run_id: str):
        return self.client.get_run(run_id)

    def load_model(self, model_uri: str):
        """Load a logged PyTorch model from ``runs:/<id>/<path>``, ``models:/...`` or a path."""
        mlflow.set_tracking_uri(self.uri)
        return mlflow.pytorch.load_model(model_uri, map_location="cpu")

    def search_runs_frame(self, experiment: str, filter_string: str = ""):
        """All runs of an experiment as a pandas DataFrame (for reports and notebooks)."""
        mlflow.set_tracking_uri(self.uri)
        return mlflow.search_runs(experiment_names=[experiment], filter_string=filter_string, output_format="pandas")


_TEXT_SUFFIXES = {".yaml", ".yml", ".json", ".txt", ".md", ".toml", ".cfg", ".ini"}


def _param_value(v: Any) -> str:
    s = mask_secrets(str(v))
    return s if len(s) <= MAX_PARAM_LEN else s[: MAX_PARAM_LEN - 3] + "..."


def _one_line(e: BaseException) -> str:
    text = f"{type(e).__name__}: {mask_secrets(str(e))}" if str(e) else type(e).__name__
    return " ".join(text.split())[:500]


def _pip_requirements() -> list[str]:
    # Given explicitly: MLflow's own inference imports and inspects the model
    # in a subprocess, seconds per logged model.
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"]
