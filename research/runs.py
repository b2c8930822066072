"""One tracked run: what every run of the workbench shares, in one place.

    ctx = RunContext(tracker, role="trial", run_name="trial-003", parent_run_id=parent,
                     extra_tags={"study": "s"}, killed_on=(optuna.TrialPruned,))
    train_student(cfg, data, ctx, seed=0, teachers=teachers)
    compress_run(cfg, data, ctx, seed=0, teachers=teachers)

:class:`RunContext` says where and how a run is tracked (the tracker, its
parent run, role, name, the caller's extra tags and params, which exceptions
end it KILLED, the config file to attach) and what runs of one job share
(progress bars, the teacher-logit cache). :func:`tracked_run` is the one way a
run is opened: the same tags, params and config artifacts for a teacher, a
student, a distilled student and a compression baseline, with the status rules
of :meth:`research.tracking.Tracker.run` (FINISHED, KILLED, FAILED). The MLflow
calls themselves stay in :mod:`research.tracking`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import yaml

from .config import RunConfig, config_hash
from .tracking import RunHandle, Tracker

if TYPE_CHECKING:
    from .distill import TeacherLogitCache

__all__ = ["RunContext", "log_config", "shared_tags", "tracked_run"]


def _frozen_mapping(m: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return MappingProxyType(dict(m or {}))


@dataclass(frozen=True)
class RunContext:
    """Where and how a run is tracked; read-only (``replace`` makes a changed copy).

    Attributes:
        tracker: the tracker, or None for a run that is not tracked (a notebook, a benchmark):
            then :func:`tracked_run` yields None and nothing is written.
        role: the ``role`` tag (``trial``, ``final_best``, ``compare``...); None: the function's
            default (``teacher``, ``student``, ``compress``).
        run_name: the MLflow run name; None: the function's default (``<role>-seed<seed>``...).
        parent_run_id: the parent run (a study, a comparison); set by id, so that workers in
            threads never rely on MLflow's per-thread active run.
        extra_tags: added to the shared tags, and win over them (a comparison's ``method``).
        extra_params: added to the run's params (a trial's ``trial.<name>`` values).
        killed_on: exception types that end the run KILLED instead of FAILED (a pruned trial).
        on_run_start: called with the run id once the run exists, before anything is logged
            (a study stores it on its trial).
        config_path: the config file as written, attached under ``config/`` when it exists.
        progress: show progress bars.
        cache: the teacher-logit cache shared by the runs of one job (None: the default folder).
    """

    tracker: Tracker | None
    _: KW_ONLY
    role: str | None = None
    run_name: str | None = None
    parent_run_id: str | None = None
    extra_tags: Mapping[str, Any] = field(default_factory=dict)
    extra_params: Mapping[str, Any] = field(default_factory=dict)
    killed_on: tuple[type[BaseException], ...] = ()
    on_run_start: Callable[[str], None] | None = None
    config_path: str | Path | None = None
    progress: bool = True
    cache: TeacherLogitCache | None = None

    def __post_init__(self) -> None:
        # Copies behind read-only views: a caller mutating its dict later cannot change this context.
        object.__setattr__(self, "extra_tags", _frozen_mapping(self.extra_tags))
        object.__setattr__(self, "extra_params", _frozen_mapping(self.extra_params))
        object.__setattr__(self, "killed_on", tuple(self.killed_on))

    def replace(self, **changes: Any) -> RunContext:
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def shared_tags(cfg: RunConfig, *, method: str, role: str, seed: int, model: str | None = None,
                teacher_run_ids: Sequence[str | None] = ()) -> dict[str, Any]:
    """The tags every run carries: ``method`` (one series per method in reports), ``role``,
    ``dataset``, ``model`` (the architecture trained or compressed), ``seed``,
    ``teacher_run_id`` (comma-separated ids of the tracked teachers; absent when none),
    ``config_hash`` (of ``cfg``, the config attached as ``config/resolved.yaml``).
    The git commit is added by :meth:`Tracker.start`. None values are not written."""
    ids = ",".join(i for i in teacher_run_ids if i)
    return {"method": method, "role": role, "dataset": cfg.data.dataset, "model": model, "seed": seed,
            "teacher_run_id": ids or None, "config_hash": config_hash(cfg)}


def log_config(run: RunHandle, cfg: RunConfig, config_path: str | Path | None) -> None:
    """The config file as written (``config/<file name>``, when ``config_path`` is a file) and
    the resolved config, defaults and overrides included (``config/resolved.yaml``)."""
    if config_path is not None and Path(config_path).is_file():
        run.log_artifact(config_path, "config")
    run.log_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), "config/resolved.yaml")


@contextlib.contextmanager
def tracked_run(ctx: RunContext, cfg: RunConfig, *, name: str, tags: Mapping[str, Any],
                params: Mapping[str, Any]) -> Iterator[RunHandle | None]:
    """Open one run in ``cfg.tracking.experiment`` and yield its handle (None when
    ``ctx.tracker`` is None).

    The run is named ``name`` (the caller resolves ``ctx.run_name`` against its default), a child
    of ``ctx.parent_run_id``, tagged ``tags`` (usually :func:`shared_tags` plus the run's own)
    then ``ctx.extra_tags``; ``ctx.on_run_start`` gets its id; then ``params`` and
    ``ctx.extra_params`` and the config (:func:`log_config`) are logged. It ends FINISHED, KILLED
    (``RunKilled``, Ctrl-C, ``ctx.killed_on``) or FAILED with the error as tags, as
    :meth:`Tracker.run` ends it, whatever happens inside; the exception propagates.
    """
    if ctx.tracker is None:
        yield None
        return
    with ctx.tracker.run(cfg.tracking.experiment, name, tags={**tags, **ctx.extra_tags}, parent_run_id=ctx.parent_run_id,
                         killed_on=ctx.killed_on) as run:
        if ctx.on_run_start is not None:
            ctx.on_run_start(run.run_id)
        run.log_params({**params, **ctx.extra_params})
        log_config(run, cfg, ctx.config_path)
        yield run
