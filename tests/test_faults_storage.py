"""A full disk or a read-only store (issue 12, item 7): one clear line from the CLI, and the MLflow
database, the Optuna journal and the teacher-logit cache still open afterwards.

The full disk is simulated by making the writer raise OSError(ENOSPC) (no test fills a disk);
the read-only database is real, opened through SQLite's own read-only mode (which holds for root
too); a read-only folder by chmod is tried only when not root, where chmod does not stop writes."""

from __future__ import annotations

import errno
import os
import shutil

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from research.cli import main
from research.distill import TeacherLogitCache
from research.sweep.storage import open_storage
from research.tracking import Tracker, TrackingWriteError

CONFIG = """
name: st
seed: 0
data: {dataset: mnist1d, cache_dir: .cache}
teachers:
  - model: {name: mlp, args: {widths: [16]}}
    train: {epochs: 1, threads: 1}
student: {name: mlp, args: {widths: [8]}}
train: {epochs: 1, threads: 1}
baseline: false
eval: {latency_repeats: 1}
tracking: {experiment: st, log_model: false}
"""


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _runs(work) -> list:
    client = MlflowClient(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("st")
    return [] if exp is None else client.search_runs([exp.experiment_id])


@pytest.fixture
def work(workdir, mnist1d_arrays):
    shutil.copytree(mnist1d_arrays, workdir / ".cache")
    (workdir / "c.yaml").write_text(CONFIG)
    return workdir


def test_full_disk_while_logging_artifacts_is_one_line_and_the_store_opens_after(work, capsys, monkeypatch):
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    with monkeypatch.context() as m:
        m.setattr(LocalArtifactRepository, "log_artifact", _enospc)
        m.setattr(LocalArtifactRepository, "log_artifacts", _enospc)
        capsys.readouterr()
        assert main(["distill", "c.yaml", "--no-progress"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if not line.strip().startswith("20")]  # MLflow's INFO lines
    assert len(err) == 1 and err[0].startswith("research: error: cannot write to the tracking store sqlite:///"), err
    assert "No space left on device" in err[0]
    (teacher,) = _runs(work)  # the database opens; the run that hit the full disk is closed, not RUNNING
    assert teacher.info.status == "FAILED" and teacher.data.tags["error_type"] == "TrackingWriteError"
    # space again: the same store takes the whole job
    assert main(["distill", "c.yaml", "--no-progress"]) == 0
    assert sorted(r.info.status for r in _runs(work)) == ["FAILED", "FINISHED", "FINISHED"]


def test_read_only_database_is_one_line_and_the_database_is_unchanged(work, capsys):
    db = work / "mlruns" / "mlflow.db"
    tracker = Tracker(f"sqlite:///{db}")
    with tracker.run("st", "before") as run:
        run.log_metrics({"a": 1.0})
    read_only = f"sqlite:///file:{db}?mode=ro&uri=true"  # SQLite refuses every write, also as root
    with pytest.raises(TrackingWriteError, match=r"cannot write to the tracking store .*: SQLite: readonly database"), \
            Tracker(read_only).run("st", "after"):
        pass
    capsys.readouterr()
    assert main(["distill", "c.yaml", "--no-progress", "--set", f"tracking.uri={read_only}"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("research:")]
    assert err == [(f"research: error: cannot write to the tracking store {read_only}: SQLite: readonly database "
                    "(free disk space or make it writable, or give another tracking.uri)")]
    (only,) = _runs(work)
    assert only.info.run_name == "before" and only.info.status == "FINISHED" and only.data.metrics == {"a": 1.0}


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes through chmod 555; "
                    "the read-only database test covers this case with SQLite's read-only mode")
def test_read_only_mlruns_folder(work, capsys):
    Tracker(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}")  # the store exists, then the folder is locked
    for p in [work / "mlruns", *(work / "mlruns").rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        capsys.readouterr()
        assert main(["distill", "c.yaml", "--no-progress"]) == 1
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("research:")]
        assert len(err) == 1 and "cannot write" in err[0], err
    finally:
        for p in [work / "mlruns", *(work / "mlruns").rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert _runs(work) == []


def test_a_journal_append_that_fails_half_way_leaves_the_journal_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "journal.log"
    storage = open_storage(str(path))
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    size = path.stat().st_size

    real_open = open

    class HalfWritten:  # writes half of what it is given, then the disk is full
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            _enospc()

    def failing_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return HalfWritten(f) if str(file) == str(path) and "a" in mode else f

    monkeypatch.setattr("builtins.open", failing_open)
    with pytest.raises(OSError, match="No space left"):
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    monkeypatch.undo()
    assert path.stat().st_size == size  # rolled back: no half line for the next append to glue onto
    again = optuna.load_study(study_name="s", storage=open_storage(str(path)))
    again.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)  # appends again, and the journal still reads
    reread = optuna.load_study(study_name="s", storage=open_storage(str(path)))
    assert [t.state for t in reread.trials].count(optuna.trial.TrialState.COMPLETE) == 3


def test_the_teacher_logit_cache_keeps_working_when_its_folder_cannot_be_written(tmp_path, monkeypatch):
    import research.distill.cache as cache_module

    monkeypatch.setattr(cache_module, "_atomic_save", _enospc)
    cache = TeacherLogitCache(tmp_path / "cache")
    model = torch.nn.Linear(4, 3)
    x = torch.randn(5, 4)
    with pytest.warns(RuntimeWarning, match="teacher-logit cache not written .*No space left on device"):
        first = cache.logits(model, x, "fp")
    assert torch.equal(first, model(x).detach())
    assert torch.equal(cache.logits(model, x, "fp"), first) and cache.hits == 1  # kept in memory
