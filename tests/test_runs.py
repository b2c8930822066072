"""One context manager opens every tracked run (research/runs.py): the shared tags, the
caller's extra tags and params, the config artifacts, the run-start hook, and the status
it ends with. A real MLflow SQLite store in a temporary folder.
"""

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from research.config import RunConfig
from research.data import DataBundle, Split
from research.pipeline import train_student
from research.runs import RunContext, shared_tags, tracked_run
from research.tracking import RunKilled, Tracker


class Pruned(Exception):
    """Stands in for optuna.TrialPruned: a type the caller says ends a run KILLED."""


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    return Tracker(f"sqlite:///{tmp_path_factory.mktemp('runs') / 'mlflow.db'}")


@pytest.fixture(scope="module")
def cfg():
    return RunConfig.model_validate({
        "name": "ctx-test",
        "student": {"name": "mlp", "args": {"widths": [8]}},
        "teachers": [{"model": {"name": "mlp"}}],
        "train": {"epochs": 1, "batch_size": 50, "device": "cpu", "threads": 1},
        "distill": {"temperature": 6.0},
        "eval": {"latency_repeats": 1},
        "tracking": {"experiment": "run-context", "log_model": False},
    })


def _run(tracker, run_id):
    return tracker.client.get_run(run_id)


def _artifact_text(tracker, run_id, path, tmp_path):
    return Path(tracker.client.download_artifacts(run_id, path, str(tmp_path))).read_text()


def _open(tracker, cfg, **ctx_kw):
    """A run opened with hand-written shared tags (not from shared_tags) and one param."""
    ctx = RunContext(tracker, **ctx_kw)
    tags = {"method": "distill", "role": "trial", "dataset": "mnist1d", "seed": 3}
    return tracked_run(ctx, cfg, name="default-name", tags=tags, params={"seed": 3})


def test_the_shared_tags(cfg):
    tags = shared_tags(cfg, method="distill", role="trial", seed=3, model="mlp", teacher_run_ids=["a1", None, "b2"])
    want_hash = hashlib.sha256(json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:16]
    assert tags == {"method": "distill", "role": "trial", "dataset": "mnist1d", "model": "mlp", "seed": 3,
                    "teacher_run_id": "a1,b2", "config_hash": want_hash}
    assert shared_tags(cfg, method="student", role="student", seed=0)["teacher_run_id"] is None  # no teacher: no tag


def test_a_run_has_the_tags_params_parent_and_config_artifacts_and_ends_finished(tracker, cfg, tmp_path):
    parent = tracker.start("run-context", "parent")
    config_file = tmp_path / "study.yaml"
    config_file.write_text("# as written\nname: ctx-test\n")
    seen = []

    def on_start(run_id):  # called before anything is logged on the run
        seen.append((run_id, dict(_run(tracker, run_id).data.params)))

    extra_tags = {"study": "s1", "method": "override"}
    with _open(tracker, cfg, parent_run_id=parent.run_id, extra_tags=extra_tags, extra_params={"trial.alpha": 0.25},
               on_run_start=on_start, config_path=config_file) as run:
        assert _run(tracker, run.run_id).info.status == "RUNNING"
        extra_tags["study"] = "changed later"  # the context copied it: the run keeps s1
    info, data = _run(tracker, run.run_id).info, _run(tracker, run.run_id).data
    assert info.status == "FINISHED" and info.run_name == "default-name"
    assert seen == [(run.run_id, {})]
    assert data.tags["mlflow.parentRunId"] == parent.run_id
    assert {k: data.tags[k] for k in ("method", "role", "dataset", "seed", "study")} == {
        "method": "override", "role": "trial", "dataset": "mnist1d", "seed": "3", "study": "s1"}  # extra tags win
    assert data.params == {"seed": "3", "trial.alpha": "0.25"}
    arts = {a.path for a in tracker.client.list_artifacts(run.run_id, "config")}
    assert arts == {"config/study.yaml", "config/resolved.yaml"}
    assert _artifact_text(tracker, run.run_id, "config/study.yaml", tmp_path / "a") == "# as written\nname: ctx-test\n"
    resolved = yaml.safe_load(_artifact_text(tracker, run.run_id, "config/resolved.yaml", tmp_path / "b"))
    assert resolved["distill"]["temperature"] == 6.0 and resolved["student"]["args"]["widths"] == [8]


def test_without_a_config_file_only_the_resolved_config_is_attached(tracker, cfg, tmp_path):
    with _open(tracker, cfg, config_path=tmp_path / "missing.yaml") as run:
        pass
    assert {a.path for a in tracker.client.list_artifacts(run.run_id, "config")} == {"config/resolved.yaml"}


@pytest.mark.parametrize("exc, killed_on, status", [
    (RunKilled("stopped early"), (), "KILLED"),
    (KeyboardInterrupt(), (), "KILLED"),
    (Pruned("pruned at epoch 2"), (Pruned,), "KILLED"),
    (Pruned("pruned at epoch 2"), (), "FAILED"),  # not declared: an error like any other
    (ValueError("bad value"), (Pruned,), "FAILED"),
])
def test_a_run_ends_killed_or_failed_and_the_exception_propagates(tracker, cfg, exc, killed_on, status):
    with pytest.raises(type(exc)):
        with _open(tracker, cfg, killed_on=killed_on) as run:
            raise exc
    got = _run(tracker, run.run_id)
    assert got.info.status == status
    if status == "FAILED":
        assert got.data.tags["error_type"] == type(exc).__name__
    else:
        assert "killed_reason" in got.data.tags and "error" not in got.data.tags


def test_an_error_in_the_run_start_hook_fails_the_run(tracker, cfg):
    ids = []

    def broken(run_id):
        ids.append(run_id)
        raise RuntimeError("hook broke")

    with pytest.raises(RuntimeError):
        with _open(tracker, cfg, on_run_start=broken):
            pass
    assert _run(tracker, ids[0]).info.status == "FAILED"


def test_without_a_tracker_nothing_is_written(tmp_path, cfg):
    store = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with tracked_run(RunContext(None, role="x"), cfg, name="n", tags={"method": "m"}, params={"a": 1}) as run:
        assert run is None
    assert store.find_runs("run-context", status=None) == []


def test_the_context_is_read_only_and_replace_copies_it(tracker):
    ctx = RunContext(tracker, role="trial", extra_tags={"a": 1}, killed_on=[Pruned])
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.role = "other"
    with pytest.raises(TypeError):
        ctx.extra_tags["b"] = 2
    assert ctx.killed_on == (Pruned,)
    child = ctx.replace(role="distill_base", extra_params={"x": 1})
    assert (child.role, dict(child.extra_params), dict(child.extra_tags), child.tracker) == ("distill_base", {"x": 1}, {"a": 1}, tracker)
    assert ctx.role == "trial" and dict(ctx.extra_params) == {}


def _toy_bundle():
    g = torch.Generator().manual_seed(0)

    def split(n):
        x = torch.randn(n, 12, generator=g)
        return Split(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())

    return DataBundle(name="toy", train=split(150), val=split(50), test=split(50), transfer=None, num_classes=3,
                      input_shape=(12,), augment=None)


def test_train_student_names_and_tags_its_run_from_the_context(tracker, cfg):
    ctx = RunContext(tracker, role="final_best", extra_tags={"study": "s2"}, extra_params={"trial.temperature": 6.0}, progress=False)
    result = train_student(cfg, _toy_bundle(), ctx, seed=5)
    got = _run(tracker, result.run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "final_best-seed5"  # the default name from the context's role
    assert result.role == "final_best"
    t = got.data.tags
    assert (t["method"], t["role"], t["model"], t["seed"], t["study"]) == ("student", "final_best", "mlp", "5", "s2")
    assert "teacher_run_id" not in t
    p = got.data.params
    assert p["seed"] == "5" and p["trial.temperature"] == "6.0" and p["student.name"] == "mlp"
    assert not any(k.startswith("distill.") for k in p)  # the student alone: no distillation knobs
    assert "config/resolved.yaml" in {a.path for a in tracker.client.list_artifacts(result.run_id, "config")}


def test_train_student_without_a_tracker_returns_metrics_and_no_run(cfg):
    result = train_student(cfg, _toy_bundle(), RunContext(None, progress=False), seed=0)
    assert result.run_id is None and 0.0 <= result.metrics["test_accuracy"] <= 1.0
    assert "tracking_time_s" not in result.metrics
