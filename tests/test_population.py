"""A stacked population of MLP students: each member equals the same student trained alone by ``fit``."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from research import population
from research.config import TrainConfig
from research.data import Split
from research.distill import Distiller
from research.models import build_model
from research.population import Member, StackedMLP, StackedOptimizer, fit_population, stack_problem, stacked_kd_loss
from research.tasks import build_task
from research.train import fit, seed_everything

SEED = 3
TASK = build_task("classification")


def toy_data(n=240, n_val=60, unlabeled=80):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n + n_val, 12, generator=g)
    y = ((x[:, 0] > 0).long() + (x[:, 1] > 0.5).long() * 2) % 4
    train_y = y[:n].clone()
    train_y[n - unlabeled:] = -1  # a transfer set: soft targets only
    return Split(x[:n], train_y), Split(x[n:], y[n:])


def teachers(k):
    out = []
    for i in range(k):
        torch.manual_seed(100 + i)
        out.append(build_model("mlp", input_shape=(12,), num_classes=4, widths=[16]).eval())
    return out


def student():
    seed_everything(SEED)  # as train_student: the initial weights follow the run's seed
    return build_model("mlp", input_shape=(12,), num_classes=4, widths=[20, 10])


def lone(train, val, cfg, tmodels, cached, *, temperature, alpha, teacher_weights=None, combine="probs"):
    model = student()
    learner = Distiller(model, tmodels, temperature=temperature, alpha=alpha, cached_logits=cached,
                        teacher_weights=teacher_weights, combine=combine if len(tmodels) > 1 else None)
    history = fit(learner, train, cfg, seed=SEED, val=val, progress=False)
    return model, history


KNOBS = [  # (T, alpha, lr, weight decay, teacher weights)
    (4.0, 0.1, 0.01, 0.0, [0.5, 0.5]),
    (20.0, 0.5, 0.003, 0.01, [0.9, 0.1]),
    (1.5, 1.0, 0.02, 0.001, [0.2, 0.8]),
]


@pytest.mark.parametrize("optimizer,combine", [("adam", "probs"), ("adamw", "logits"), ("sgd", "kl_sum")])
def test_each_member_equals_its_lone_run(optimizer, combine):
    train, val = toy_data()
    tmodels = teachers(2)
    cached = [TASK.predict(t, train.x) for t in tmodels]
    base = TrainConfig(epochs=2, batch_size=32, optimizer=optimizer, nesterov=optimizer == "sgd", schedule="cosine",
                       threads=1, device="cpu")
    members = [Member(student(), temperature=t, alpha=a, lr=lr, weight_decay=wd, teacher_weights=w)
               for t, a, lr, wd, w in KNOBS]
    results = fit_population(members, train, base, seed=SEED, teacher_logits=cached, task=TASK, val=val, combine=combine)
    for (t, a, lr, wd, w), res in zip(KNOBS, results):
        cfg = base.model_copy(update={"lr": lr, "weight_decay": wd})
        model, history = lone(train, val, cfg, tmodels, cached, temperature=t, alpha=a, teacher_weights=w, combine=combine)
        assert res.error is None
        # Not bitwise: baddbmm sums the matmuls in another order than the lone addmm.
        torch.testing.assert_close(res.model(val.x), model(val.x), atol=1e-5, rtol=1e-5)
        for (name, p), q in zip(model.state_dict().items(), res.model.state_dict().values()):
            torch.testing.assert_close(q, p, atol=1e-5, rtol=1e-5, msg=name)
        assert len(res.history.epochs) == len(history.epochs) == 2
        for mine, theirs in zip(res.history.epochs, history.epochs):
            for key in ("train_loss", "train_hard", "train_soft", "lr", "val_accuracy", "val_nll"):
                assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), key


def test_one_teacher_and_a_member_stopped_by_its_callback():
    train, val = toy_data()
    tmodels = teachers(1)
    cached = [TASK.predict(t, train.x) for t in tmodels]
    cfg = TrainConfig(epochs=3, batch_size=50, optimizer="adam", lr=0.01, schedule="none", threads=1, device="cpu")

    class Stop(Exception):
        pass

    def stop_at_1(epoch, metrics):
        if epoch == 1:
            raise Stop("pruned")

    members = [Member(student(), temperature=4.0, alpha=0.1, lr=0.01),
               Member(student(), temperature=2.0, alpha=0.3, lr=0.01, callbacks=[stop_at_1]),
               Member(student(), temperature=8.0, alpha=0.0, lr=0.005)]
    results = fit_population(members, train, cfg, seed=SEED, teacher_logits=cached, task=TASK, val=val)
    assert isinstance(results[1].error, Stop) and len(results[1].history.epochs) == 1
    assert results[0].error is None and len(results[0].history.epochs) == 3
    for i, (t, a, lr) in ((0, (4.0, 0.1, 0.01)), (2, (8.0, 0.0, 0.005))):  # the others go on unchanged
        model, _ = lone(train, val, cfg.model_copy(update={"lr": lr}), tmodels, cached, temperature=t, alpha=a)
        torch.testing.assert_close(results[i].model(val.x), model(val.x), atol=1e-5, rtol=1e-5)
    # The stopped member keeps its weights after epoch 1: the lone run of one epoch.
    model, _ = lone(train, val, cfg.model_copy(update={"epochs": 1}), tmodels, cached, temperature=2.0, alpha=0.3)
    torch.testing.assert_close(results[1].model(val.x), model(val.x), atol=1e-5, rtol=1e-5)


def test_stacked_loss_matches_hand_computed_values():
    # One member, one row, two classes, labelled: values worked out by hand below.
    s = torch.tensor([[[2.0, 0.0]]])  # student logits [K=1, B=1, C=2]
    t = torch.tensor([[[0.0, 2.0]]])  # teacher logits [N=1, B=1, C=2]
    temperature, alpha = 2.0, 0.25
    # At T=2: q = softmax([1, 0]), p = softmax([0, 1]).
    q1 = 1 / (1 + math.exp(-1))
    p1 = 1 / (1 + math.exp(1))
    kl = p1 * math.log(p1 / q1) + (1 - p1) * math.log((1 - p1) / (1 - q1))
    ce = -math.log(1 / (1 + math.exp(-2)))  # label 0, logits [2, 0]
    loss, hard, soft = stacked_kd_loss(s, t, torch.tensor([0]), temperature=torch.tensor([temperature]),
                                       alpha=torch.tensor([alpha]))
    assert soft.item() == pytest.approx(kl, rel=1e-6)
    assert hard.item() == pytest.approx(ce, rel=1e-6)
    assert loss.item() == pytest.approx(alpha * ce + (1 - alpha) * temperature**2 * kl, rel=1e-6)
    # Unlabeled rows: no hard term.
    loss, hard, _ = stacked_kd_loss(s, t, torch.tensor([-1]), temperature=torch.tensor([temperature]), alpha=torch.tensor([alpha]))
    assert hard.item() == 0.0 and loss.item() == pytest.approx((1 - alpha) * temperature**2 * kl, rel=1e-6)


def test_non_finite_member_fails_alone():
    train, val = toy_data()
    cached = [TASK.predict(t, train.x) for t in teachers(1)]
    cfg = TrainConfig(epochs=2, batch_size=60, optimizer="sgd", momentum=0.0, lr=0.01, schedule="none", threads=1, device="cpu")
    members = [Member(student(), temperature=4.0, alpha=0.5, lr=0.01), Member(student(), temperature=4.0, alpha=0.5, lr=1e30)]
    results = fit_population(members, train, cfg, seed=SEED, teacher_logits=cached, task=TASK, val=val)
    assert results[0].error is None and len(results[0].history.epochs) == 2
    assert type(results[1].error).__name__ == "NonFiniteLossError"


def test_what_stacks():
    assert stack_problem(build_model("mnist1d_mlp", input_shape=(40,), num_classes=10)) is None
    assert "dropout" in stack_problem(build_model("mlp", input_shape=(12,), num_classes=3, dropout=0.2))
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    assert "not a plain MLP" in stack_problem(bn)
    with pytest.raises(ValueError, match="architecture"):
        StackedMLP([build_model("mlp", input_shape=(12,), num_classes=3, widths=[4]),
                    build_model("mlp", input_shape=(12,), num_classes=3, widths=[5])])
    # The stacked forward of lone weights is the lone forward.
    models = [build_model("mlp", input_shape=(12,), num_classes=3, widths=[7]) for _ in range(3)]
    x = torch.randn(5, 12)
    out = StackedMLP(models)(x)
    for i, m in enumerate(models):
        torch.testing.assert_close(out[i], m(x), atol=1e-6, rtol=1e-6)
    assert F.softmax(out, -1).shape == (3, 5, 3)


@pytest.mark.parametrize("kind,momentum,nesterov", [("adam", 0.0, False), ("adamw", 0.0, False), ("sgd", 0.9, True), ("sgd", 0.0, False)])
def test_fused_and_elementwise_optimizers_agree_with_torch(kind, momentum, nesterov):
    # Both forms of StackedOptimizer against torch.optim run member by member on the same gradients.
    g = torch.Generator().manual_seed(1)
    p0 = torch.randn(3, 7, generator=g)
    grads = [torch.randn(3, 7, generator=g) for _ in range(4)]
    lrs, wds = [0.1, 0.01, 0.003], [0.0, 0.01, 0.5]
    expected = []
    for k in range(3):
        param = nn.Parameter(p0[k].clone())
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[kind]
        extra = {"momentum": momentum, "nesterov": nesterov} if kind == "sgd" else {}
        opt = cls([param], lr=lrs[k], weight_decay=wds[k], **extra)
        for grad in grads:
            param.grad = grad[k].clone()
            opt.step()
        expected.append(param.detach())
    for fused in (True, False):
        p = p0.clone()
        opt = StackedOptimizer(kind, momentum=momentum, nesterov=nesterov, fused=fused)
        for grad in grads:
            opt.step(p, grad.clone(), lrs, wds)
        torch.testing.assert_close(p, torch.stack(expected), atol=1e-6, rtol=1e-6, msg=f"fused={fused}")


def test_teacher_targets_per_batch_equal_the_precomputed_ones(monkeypatch):
    # Large populations compute the teachers' targets per batch: the same training, to rounding.
    train, val = toy_data()
    cached = [TASK.predict(t, train.x) for t in teachers(2)]
    cfg = TrainConfig(epochs=2, batch_size=32, optimizer="adam", schedule="none", threads=1, device="cpu")

    def run():
        members = [Member(student(), temperature=t, alpha=a, lr=lr, teacher_weights=w) for t, a, lr, _, w in KNOBS]
        return fit_population(members, train, cfg, seed=SEED, teacher_logits=cached, task=TASK, val=val, combine="kl_sum")

    precomputed = run()
    monkeypatch.setattr(population, "MAX_TARGET_ELEMENTS", 0)
    per_batch = run()
    for a, b in zip(precomputed, per_batch):
        torch.testing.assert_close(a.model(val.x), b.model(val.x), atol=1e-6, rtol=1e-6)
        assert a.history.epochs[-1]["train_soft"] == pytest.approx(b.history.epochs[-1]["train_soft"], rel=1e-6)
