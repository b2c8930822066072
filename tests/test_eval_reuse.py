"""The serial part of a study kept small (issue 11, "everything else off the hot path"):
teachers' predictions on val and test computed once per process, a population round evaluated
in one stacked pass with the same numbers as each member alone, a run's metric history logged
in batched calls with the same values and steps as one call per epoch."""

from __future__ import annotations

import contextlib
import io
import shutil

import pytest
import torch
from torch import nn

import research.sweep.study as sweep_study
from research.cli import main
from research.config import RunConfig
from research.data import DataBundle, Split
from research.distill import TeacherLogitCache
from research.evaluate import predict
from research.models import build_model
from research.pipeline import evaluate_population, evaluate_run
from research.population import stacked_logits
from research.tasks import build_task
from research.tracking import Tracker

from .study_support import PLAIN, blank_db, chdir_to, client_for, keep_torch_threads, load, study_cache, trial_runs, write_study  # noqa: F401

DEPLOYMENT_EXACT = ("params", "params_nonzero", "size_bytes", "payload_bytes", "flops", "latency_threads")


class Counting(nn.Module):
    """A real model around a real model: records every batch it is called on."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.inner(x)

    def calls_on(self, x: torch.Tensor) -> int:
        return sum(1 for b in self.inputs if b.shape == x.shape and torch.equal(b, x))


def _bundle(n_val=60, n_test=70, seed=0) -> DataBundle:
    g = torch.Generator().manual_seed(seed)

    def split(n):
        x = torch.randn(n, 12, generator=g)
        return Split(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())

    return DataBundle(name="toy", train=split(100), val=split(n_val), test=split(n_test), transfer=None, num_classes=3,
                      input_shape=(12,), augment=None)


def _mlp(seed, widths=(16, 8)):
    torch.manual_seed(seed)
    return build_model("mlp", input_shape=(12,), num_classes=3, widths=list(widths)).eval()


def _cfg(batch_size=1024) -> RunConfig:
    return RunConfig.model_validate({
        "name": "reuse", "student": {"name": "mlp", "args": {"widths": [16, 8]}}, "teachers": [{"model": {"name": "mlp"}}],
        "eval": {"latency_repeats": 1, "batch_size": batch_size}, "tracking": {"log_model": False},
    })


# ---------------------------------------------------------------- teachers' predictions, once


def test_predictions_are_computed_once_and_recomputed_when_anything_they_depend_on_changes():
    task, data = build_task("classification"), _bundle()
    teacher = Counting(_mlp(1))
    cache = TeacherLogitCache()  # no folder: memory only
    first = cache.predictions(teacher, data.val.x, data.val.y, task=task)
    again = cache.predictions(teacher, data.val.x, data.val.y, task=task)
    assert again is first and teacher.calls_on(data.val.x) == 1
    torch.testing.assert_close(first, teacher.inner(data.val.x), rtol=0, atol=0)

    same_values = data.val.x.clone()  # other tensor, same numbers: not the same split, computed again
    cache.predictions(teacher, same_values, data.val.y, task=task)
    assert teacher.calls_on(data.val.x) == 2
    cache.predictions(teacher, data.val.x, data.val.y, task=task, batch_size=7)  # batch size is part of the key
    assert teacher.calls_on(data.val.x[:7]) == 1

    with torch.no_grad():  # an in-place write to the teacher's weights (version counter moves)
        teacher.inner.net[1].weight.mul_(2.0)
    changed = cache.predictions(teacher, data.val.x, data.val.y, task=task)
    torch.testing.assert_close(changed, teacher.inner(data.val.x), rtol=0, atol=0)
    assert not torch.equal(changed, first)
    teacher.inner.net[1].bias.data.add_(1.0)  # through .data: torch's version counter does not move; the content key does
    shifted = cache.predictions(teacher, data.val.x, data.val.y, task=task)
    torch.testing.assert_close(shifted, teacher.inner(data.val.x), rtol=0, atol=0)
    assert not torch.equal(shifted, changed)

    n = teacher.calls_on(data.val.x)
    shifted.add_(1.0)  # a caller writing into the logits it was given: never served again
    assert torch.equal(cache.predictions(teacher, data.val.x, data.val.y, task=task), teacher.inner(data.val.x))
    assert teacher.calls_on(data.val.x) == n + 1


def test_entries_of_freed_splits_are_dropped():
    task, teacher, cache = build_task("classification"), _mlp(1), TeacherLogitCache()
    for seed in range(5):  # a fold's val split per trial: each freed when its trial ends
        cache.predictions(teacher, torch.randn(20, 12, generator=torch.Generator().manual_seed(seed)), task=task)
    assert len(cache._predictions) == 1  # noqa: SLF001 - the memo's size is what this test is about


def test_evaluate_run_with_the_reuse_logs_what_it_logs_without():
    data, cfg = _bundle(), _cfg()
    teachers = [Counting(_mlp(1)), Counting(_mlp(2, widths=(20,)))]
    cache = TeacherLogitCache()
    students = [_mlp(10 + i) for i in range(3)]
    for student in students:
        plain = evaluate_run(student, data, cfg, teachers=teachers, teacher_weights=[0.3, 0.7], combine="probs", with_deployment=False)
        reused = evaluate_run(student, data, cfg, teachers=teachers, teacher_weights=[0.3, 0.7], combine="probs",
                              with_deployment=False, cache=cache)
        assert reused == plain and "val_agreement" in reused and "test_kl_to_teacher" in reused
    for t in teachers:  # without the cache once per student and split; with it once per split in all
        assert t.calls_on(data.val.x) == len(students) + 1 and t.calls_on(data.test.x) == len(students) + 1


def _counting_teachers(counted: dict):
    real = sweep_study.obtain_teachers

    def obtain(cfg, data, tracker, **kw):  # the study's real teachers, each inside a counting wrapper
        teachers = real(cfg, data, tracker, **kw)
        for t in teachers:
            t.model = Counting(t.model).eval()
        counted["teachers"], counted["data"] = [t.model for t in teachers], data
        return teachers

    return obtain


@pytest.mark.parametrize("population", [1, 2])
def test_a_study_calls_each_teacher_once_per_split(tmp_path, monkeypatch, study_cache, blank_db, population):
    counted: dict = {}
    monkeypatch.setattr(sweep_study, "obtain_teachers", _counting_teachers(counted))
    chdir_to(monkeypatch, tmp_path, blank_db)
    path = write_study(tmp_path, "once", study_cache, PLAIN, sampler="random", n_trials=4)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["study", "run", str(path), "--no-progress", "--population", str(population)]) == 0
    trials = load(tmp_path, "once").get_trials()
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert all(t.user_attrs.get("population") == (2 if population == 2 else None) for t in trials)
    data = counted["data"]
    for teacher in counted["teachers"]:
        assert teacher.calls_on(data.val.x) == 1 and teacher.calls_on(data.test.x) == 1
    runs = trial_runs(client_for(tmp_path), "once")
    assert len(runs) == 4 and all("val_agreement" in r.data.metrics for r in runs)
    shared = [r.data.tags.get("latency_shared_by_population") for r in runs]
    assert shared == (["true"] * 4 if population == 2 else [None] * 4)


# ---------------------------------------------------------------- a population round in one pass


def test_stacked_logits_are_each_models_own_in_any_batching():
    models, x = [_mlp(s) for s in range(4)], torch.randn(50, 12, generator=torch.Generator().manual_seed(3))
    whole = stacked_logits(models, x)
    assert whole.shape == (4, 50, 3) and whole.dtype == torch.float32
    for k, m in enumerate(models):
        torch.testing.assert_close(whole[k], predict(m, x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stacked_logits(models, x, batch_size=7), whole, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="differ in architecture"):
        stacked_logits([_mlp(0), _mlp(1, widths=(5,))], x)


@pytest.mark.parametrize("combine", ["probs", "logits", "kl_sum"])
def test_a_population_evaluated_in_one_pass_equals_each_member_evaluated_alone(combine):
    data, cfg = _bundle(), _cfg(batch_size=32)  # batches smaller than the splits
    teachers = [_mlp(1), _mlp(2, widths=(20,))]
    members = [_mlp(10 + k) for k in range(3)]
    with torch.no_grad():
        members[2].net[1].weight[:2] = 0.0  # 24 weights at exactly zero: its own params_nonzero
    weights = [[0.5, 0.5], [0.9, 0.1], None]
    together = evaluate_population(members, data, cfg, teachers=teachers, teacher_weights=weights, combine=combine,
                                   cache=TeacherLogitCache())
    assert len(together) == 3
    for model, w, got in zip(members, weights, together):
        alone = evaluate_run(model, data, cfg, teachers=teachers, teacher_weights=w, combine=combine)
        assert set(got) == set(alone)
        quality = [k for k in alone if k.startswith(("val_", "test_"))]
        assert {"val_accuracy", "test_ece", "val_agreement", "test_kl_to_teacher"} <= set(quality)
        for k in quality:
            assert got[k] == pytest.approx(alone[k], abs=1e-6), k
        for k in DEPLOYMENT_EXACT:  # the shared architecture's counts and bytes are each member's own
            assert got[k] == alone[k], k
    assert len({m["latency_b1_ms"] for m in together}) == 1  # measured once, shared
    assert together[2]["params_nonzero"] == together[0]["params_nonzero"] - 24
    # Members differ, and so do their metrics (the pass does not hand one member's numbers to all).
    assert len({m["val_nll"] for m in together}) == 3


def test_a_population_without_teachers_has_no_teacher_metrics():
    data, cfg = _bundle(), _cfg()
    got = evaluate_population([_mlp(3), _mlp(4)], data, cfg)
    alone = evaluate_run(_mlp(4), data, cfg)
    assert "val_agreement" not in got[1]
    for k in ("val_accuracy", "val_nll", "test_ece", "test_errors"):
        assert got[1][k] == pytest.approx(alone[k], abs=1e-6)


# ---------------------------------------------------------------- a metric history in batched calls


@pytest.fixture
def tracker(tmp_path, blank_db):
    shutil.copy(blank_db, tmp_path / "mlflow.db")  # a fresh real store without MLflow's migrations each time
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _history(run_id, client, key):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.timestamp, m.step))]


def test_log_history_gives_the_history_of_one_call_per_epoch(tracker):
    epochs = [{"train_loss": 1.5, "val_accuracy": 0.25}, {"train_loss": 0.75, "val_accuracy": 0.5},
              {"train_loss": 0.5, "val_accuracy": 0.625, "lr": 0.001}]
    final = {"test_accuracy": 0.5, "val_accuracy": 0.6}
    with tracker.run("hist", "per-epoch") as a:
        for step, m in enumerate(epochs, 1):
            a.log_metrics(m, step=step)
        a.log_metrics(final, step=3)
    with tracker.run("hist", "batched") as b:
        b.log_history(epochs, final=final, final_step=3)
    c = tracker.client
    for key in ("train_loss", "val_accuracy", "lr", "test_accuracy"):
        assert _history(b.run_id, c, key) == _history(a.run_id, c, key), key
    # Written out by hand: the epochs at steps 1..3, then the final value at step 3.
    assert _history(b.run_id, c, "val_accuracy") == [(1, 0.25), (2, 0.5), (3, 0.625), (3, 0.6)]
    assert _history(b.run_id, c, "lr") == [(3, 0.001)]
    assert c.get_run(b.run_id).data.metrics["val_accuracy"] == 0.6  # the latest value is the final one, as before


def test_a_final_value_equal_to_the_last_epochs_stays_a_second_entry(tracker):
    with tracker.run("hist", "equal") as run:
        run.log_history([{"val_accuracy": 0.5}, {"val_accuracy": 0.75}], final={"val_accuracy": 0.75, "params": 10.0})
    assert _history(run.run_id, tracker.client, "val_accuracy") == [(1, 0.5), (2, 0.75), (2, 0.75)]
    assert _history(run.run_id, tracker.client, "params") == [(2, 10.0)]  # the final step defaults to the last epoch


def test_a_history_over_mlflows_batch_limit_is_chunked(tracker, monkeypatch):
    epochs = [{f"m{j:02d}": float(i * 100 + j) for j in range(40)} for i in range(30)]  # 1,200 values, 2 calls
    calls = []
    real = tracker.client.log_batch
    monkeypatch.setattr(tracker.client, "log_batch", lambda *a, **kw: (calls.append(len(kw.get("metrics", ()))), real(*a, **kw))[1])
    with tracker.run("hist", "long") as run:
        run.log_history(epochs)
    assert [n for n in calls if n] == [1000, 200]
    got = _history(run.run_id, tracker.client, "m07")
    assert got == [(i + 1, float(i * 100 + 7)) for i in range(30)]
