"""Tasks: one contract suite over every registered task, classification's golden values, and the
loop and evaluation asking the task (not assuming accuracy).

A new task is covered by the contract tests without edits: they parametrize over
``available_tasks()`` and run on the task's own ``toy()`` problem.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from research import tasks as tasks_mod
from research.config import ConfigError, RunConfig, TrainConfig, parse
from research.data import Split
from research.distill import Distiller, Supervised, teacher_log_probs
from research.evaluate import count_flops, deployment_metrics
from research.tasks import available_tasks, build_task, register_task
from research.tasks.classification import Classification
from research.train import fit


def _finite(d: dict[str, float]) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in d.values())


@pytest.mark.parametrize("name", available_tasks())
def test_contract_a_batch_through_a_tiny_model(name):
    task = build_task(name)
    toy = task.toy(seed=0, n=12)
    assert task.direction in ("maximize", "minimize")
    assert task.validation_metric in task.epoch_metric_names and task.validation_metric in task.metric_names

    toy.model.train()
    logits = task.forward(toy.model, toy.x, toy.y)
    rows, labels = task.loss_rows(logits, toy.y)
    assert rows.dim() == 2 and rows.shape[-1] == toy.num_classes and labels.shape == rows.shape[:1]
    out = Supervised(toy.model, task=task).training_step(toy.x, toy.y)
    out.losses["loss"].backward()
    assert math.isfinite(out.losses["loss"].item())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in toy.model.parameters())

    toy.model.train()
    full = task.predict(toy.model, toy.x, toy.y, batch_size=5)  # several batches
    assert full.shape[0] == len(toy.x) and toy.model.training  # the mode is restored
    assert torch.allclose(full, task.predict(toy.model, toy.x, toy.y), atol=1e-6)

    epoch = task.epoch_metrics(toy.model, toy.x, toy.y)
    assert set(epoch) == set(task.epoch_metric_names) and _finite(epoch)
    run = task.evaluate(toy.model, toy.x, toy.y, batch_size=5)
    assert set(run) == set(task.metric_names) and _finite(run)
    assert run[task.validation_metric] == pytest.approx(epoch[task.validation_metric])

    other = task.toy(seed=1, n=12).model
    t_logits = teacher_log_probs([task.predict(other, toy.x, toy.y)], 1.0)
    with_teacher = task.evaluate(toy.model, toy.x, toy.y, teacher_logits=t_logits)
    assert set(with_teacher) == set(task.metric_names) | set(task.teacher_metric_names) and _finite(with_teacher)


@pytest.mark.parametrize("name", available_tasks())
def test_contract_example_input_runs_for_latency_flops_and_export(name):
    task = build_task(name)
    toy = task.toy()
    for b in (1, 3):
        x = task.example_input(toy.input_shape, b)
        assert x.shape[:1] == (b,) and x.dtype == toy.x.dtype
        with torch.no_grad():
            assert task.forward(toy.model.eval(), x).shape[0] == b
    m = deployment_metrics(toy.model, toy.input_shape, repeats=1, example=lambda b: task.example_input(toy.input_shape, b))
    assert m["flops"] > 0 and m["latency_b1_ms"] > 0
    exported = torch.export.export(toy.model.eval(), (task.example_input(toy.input_shape, 2),))
    assert exported is not None


@pytest.mark.parametrize("name", available_tasks())
def test_contract_the_loop_validates_on_the_task_metrics(name):
    task = build_task(name)
    toy, val = task.toy(seed=0, n=40), task.toy(seed=1, n=10)
    teacher = task.toy(seed=2).model
    for learner in (Supervised(toy.model, task=task), Distiller(toy.model, teacher, temperature=2.0, alpha=0.5, task=task)):
        h = fit(learner, Split(toy.x, toy.y), TrainConfig(epochs=2, batch_size=16, device="cpu"), seed=0,
                val=Split(val.x, val.y), progress=False)
        assert {f"val_{k}" for k in task.epoch_metric_names} <= set(h.last)
        assert math.isfinite(h.last["train_loss"])


# ---------------------------------------------------------------- classification, golden values


def test_classification_metrics_hand_computed():
    task = build_task("classification")
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
    y = torch.tensor([0, 1, 2, 1])
    m = task.evaluate(nn.Identity(), logits, y)
    # predictions 0, 1, 2, 0: three right
    assert m["accuracy"] == 0.75 and m["errors"] == 1.0
    # NLL by hand: -log softmax at the label
    lse = [math.log(math.exp(2) + 2), math.log(math.exp(1) + 2), math.log(math.exp(3) + 2), math.log(math.e + 2)]
    nll = ((lse[0] - 2) + (lse[1] - 1) + (lse[2] - 3) + (lse[3] - 0)) / 4
    assert m["nll"] == pytest.approx(nll, rel=1e-6)
    assert task.epoch_metrics(nn.Identity(), logits, y) == {"accuracy": 0.75, "nll": pytest.approx(nll, rel=1e-6)}
    assert task.validation_metric == "accuracy" and task.direction == "maximize"
    assert count_flops(nn.Linear(4, 2), (4,), example=lambda b: task.example_input((4,), b)) == 2 * 4 * 2


def test_run_config_names_a_registered_task():
    assert parse(RunConfig, {}).task == "classification"
    with pytest.raises(ConfigError, match=r"^config: task: unknown task 'seq2seq'; available: classification"):
        parse(RunConfig, {"task": "seq2seq"})
    with pytest.raises(ValueError, match="unknown task"):
        build_task("seq2seq")


def test_the_loop_asks_the_task_for_its_validation_metrics(monkeypatch):
    """A task registered here with another validation metric: the loop logs it, not accuracy."""
    monkeypatch.setattr(tasks_mod, "_REGISTRY", dict(tasks_mod._REGISTRY))

    @register_task("classification_top2")
    class Top2(Classification):
        validation_metric = "top2"
        epoch_metric_names = ("top2",)
        metric_names = ("top2",)

        def epoch_metrics(self, model, x, y, *, device=None):
            top2 = self.predict(model, x, device=device).topk(2, dim=1).indices
            return {"top2": float((top2 == y[:, None]).any(1).float().mean())}

    with pytest.raises(ValueError, match="already registered"):
        register_task("classification_top2")(Top2)
    task = build_task("classification_top2")
    toy, val = task.toy(n=32), task.toy(seed=1, n=16)
    h = fit(Supervised(toy.model, task=task), Split(toy.x, toy.y), TrainConfig(epochs=1, batch_size=8, device="cpu"), seed=0,
            val=Split(val.x, val.y), progress=False)
    assert "val_top2" in h.last and "val_accuracy" not in h.last
