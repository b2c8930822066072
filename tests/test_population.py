"""A stacked population of MLP students: each member equals the same student trained alone by ``fit``."""

import math
import time

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
        assert res.history.wall_time_s == pytest.approx(sum(e["epoch_time_s"] for e in res.history.epochs))
        for mine, theirs in zip(res.history.epochs, history.epochs):
            for key in ("train_loss", "train_hard", "train_soft", "lr", "val_accuracy", "val_nll"):
                assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_each_member_equals_its_lone_run_on_cuda():
    # The device path: buffers, fused kernels and the step count on the GPU; results come back on the CPU.
    train, val = toy_data()
    tmodels = teachers(2)
    cached = [TASK.predict(t, train.x) for t in tmodels]
    base = TrainConfig(epochs=2, batch_size=32, optimizer="adamw", schedule="cosine", threads=1, device="cuda")
    members = [Member(student(), temperature=t, alpha=a, lr=lr, weight_decay=wd, teacher_weights=w) for t, a, lr, wd, w in KNOBS]
    results = fit_population(members, train, base, seed=SEED, teacher_logits=cached, task=TASK, val=val)
    for (t, a, lr, wd, w), res in zip(KNOBS, results):
        assert res.error is None and not next(res.model.parameters()).is_cuda
        model, _ = lone(train, val, base.model_copy(update={"lr": lr, "weight_decay": wd}), tmodels, cached,
                        temperature=t, alpha=a, teacher_weights=w)
        torch.testing.assert_close(res.model(val.x), model(val.x.cuda()).cpu(), atol=1e-4, rtol=1e-4)


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


def test_all_members_stopped_without_validation_and_the_time_shares():
    # Callbacks get the epoch's metrics; with every member stopped after epoch 1 of 3 the results still
    # come back; without a validation split no val_ metric is logged; each member's epoch_time_s is
    # its share of the stack's epoch, so the shares add up to at most the call's wall time.
    train, _ = toy_data()
    cached = [TASK.predict(t, train.x) for t in teachers(1)]
    cfg = TrainConfig(epochs=3, batch_size=50, optimizer="adam", lr=0.01, schedule="none", threads=1, device="cpu")
    seen = []

    def stop(epoch, metrics):
        seen.append(dict(metrics))
        raise RuntimeError("stop")

    members = [Member(student(), temperature=4.0, alpha=0.1, lr=0.01, callbacks=[stop]) for _ in range(2)]
    t0 = time.perf_counter()
    results = fit_population(members, train, cfg, seed=SEED, teacher_logits=cached, task=TASK)
    wall = time.perf_counter() - t0
    assert [str(r.error) for r in results] == ["stop", "stop"] and all(len(r.history.epochs) == 1 for r in results)
    assert len(seen) == 2 and all("train_loss" in m and not any(k.startswith("val_") for k in m) for m in seen)
    shares = [r.history.epochs[0]["epoch_time_s"] for r in results]
    assert all(sh > 0 for sh in shares) and sum(shares) <= wall
    assert [r.history.wall_time_s for r in results] == pytest.approx(shares)


def test_loss_values_flushed_to_float64_equal_the_lone_run(monkeypatch):
    # 8 steps an epoch, the float32 sums moved into float64 every 3 steps: the epoch's loss values
    # still equal the lone run's (a lost or doubled flush would not).
    monkeypatch.setattr(population, "ACC_FLUSH_STEPS", 3)
    train, val = toy_data()
    tmodels = teachers(1)
    cached = [TASK.predict(t, train.x) for t in tmodels]
    cfg = TrainConfig(epochs=1, batch_size=32, optimizer="adam", lr=0.01, schedule="none", threads=1, device="cpu")
    [res] = fit_population([Member(student(), temperature=3.0, alpha=0.4, lr=0.01)], train, cfg, seed=SEED,
                           teacher_logits=cached, task=TASK, val=val)
    _, history = lone(train, val, cfg, tmodels, cached, temperature=3.0, alpha=0.4)
    for key in ("train_loss", "train_hard", "train_soft"):
        assert res.history.epochs[0][key] == pytest.approx(history.epochs[0][key], rel=1e-5), key


def test_population_input_errors():
    train, val = toy_data()
    cached = [TASK.predict(t, train.x) for t in teachers(1)]
    cfg = TrainConfig(epochs=1, batch_size=32, threads=1, device="cpu")
    with pytest.raises(ValueError, match="at least one member"):
        fit_population([], train, cfg, seed=SEED, teacher_logits=cached, task=TASK)
    with pytest.raises(ValueError, match="at least one teacher"):
        fit_population([Member(student(), temperature=2.0, alpha=0.5, lr=0.01)], train, cfg, seed=SEED, teacher_logits=[], task=TASK)
    with pytest.raises(ValueError, match="teachers' logits have 3 classes, the students 4"):
        fit_population([Member(student(), temperature=2.0, alpha=0.5, lr=0.01)], train, cfg, seed=SEED,
                       teacher_logits=[cached[0][:, :3]], task=TASK)


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
    # Unlabeled rows, or no labels at all: no hard term.
    for labels in (torch.tensor([-1]), None):
        loss, hard, _ = stacked_kd_loss(s, t, labels, temperature=torch.tensor([temperature]), alpha=torch.tensor([alpha]))
        assert hard.item() == 0.0 and loss.item() == pytest.approx((1 - alpha) * temperature**2 * kl, rel=1e-6)
    # Two teachers, kl_sum: the soft term is the weighted sum of each teacher's KL (the second teacher's by hand).
    t2 = torch.tensor([[[1.0, 0.0]]])
    p2 = 1 / (1 + math.exp(-0.5))  # softmax([1, 0] / 2)[0]
    kl2 = p2 * math.log(p2 / q1) + (1 - p2) * math.log((1 - p2) / (1 - q1))
    _, _, soft = stacked_kd_loss(s, torch.cat([t, t2]), None, temperature=torch.tensor([temperature]), alpha=torch.tensor([alpha]),
                                 teacher_weights=torch.tensor([[0.25, 0.75]]), combine="kl_sum")
    assert soft.item() == pytest.approx(0.25 * kl + 0.75 * kl2, rel=1e-6)
    # combine="logits": one softened distribution of the weighted logits, 0.25 [0, 2] + 0.75 [1, 0] = [0.75, 0.5].
    p3 = 1 / (1 + math.exp(-(0.75 - 0.5) / temperature))
    kl3 = p3 * math.log(p3 / q1) + (1 - p3) * math.log((1 - p3) / (1 - q1))
    _, _, soft = stacked_kd_loss(s, torch.cat([t, t2]), None, temperature=torch.tensor([temperature]), alpha=torch.tensor([alpha]),
                                 teacher_weights=torch.tensor([[0.25, 0.75]]), combine="logits")
    assert soft.item() == pytest.approx(kl3, rel=1e-6)
    # No weights given: uniform over the teachers.
    both = torch.cat([t, t2])
    uniform = population.teacher_targets(both, torch.tensor([temperature]), None, "probs")
    explicit = population.teacher_targets(both, torch.tensor([temperature]), torch.tensor([[0.5, 0.5]]), "probs")
    torch.testing.assert_close(uniform, explicit)


@pytest.mark.parametrize("labels", [[0, 2, -1, 1, -1], [-1, -1, 0, -1, -1], [-1] * 5],
                         ids=["some-labelled", "one-labelled", "none-labelled"])
def test_closed_form_logit_gradient_equals_autograd(labels):
    # kd_logit_grad against autograd through kd_loss_from_targets (itself checked by hand above), two
    # teachers, per-member T and alpha; the loss values from the returned log-probabilities too.
    g = torch.Generator().manual_seed(2)
    k, b, c = 3, 5, 4
    temperature, alpha = torch.tensor([1.0, 4.0, 20.0]), torch.tensor([0.0, 0.3, 1.0])
    y = torch.tensor(labels)
    z = torch.randn(k, b, c, generator=g, requires_grad=True)
    target, target_c = population.teacher_targets(torch.randn(2, b, c, generator=g), temperature,
                                                  torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]]), "probs")
    loss, hard, soft = population.kd_loss_from_targets(z, target, target_c, y, temperature=temperature, alpha=alpha)
    loss.sum().backward()
    labelled = (y >= 0).float()
    onehot = F.one_hot(y.clamp(min=0), c).t().float() * labelled
    n_lab = max(float(labelled.sum()), 1.0)
    col = lambda t: t.reshape(k, 1, 1)  # noqa: E731
    grad, log_q, log_s = population.kd_logit_grad(
        z.detach().transpose(1, 2).contiguous(), target, onehot, labelled, inv_temperature=col(1 / temperature),
        soft_scale=col((1 - alpha) * temperature / b), hard_scale=col(alpha / n_lab))
    torch.testing.assert_close(grad, z.grad.transpose(1, 2), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close((target_c.sum(1) - (target * log_q).sum((1, 2))) / b, soft, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(-(onehot * log_s).sum((1, 2)) / n_lab, hard, atol=1e-6, rtol=1e-5)


def test_epoch_labels_scale_each_batch_by_its_own_labelled_rows():
    # 7 samples in batches of 4 and 3: the hard term's scales are per batch, the values weighted by batch size.
    y = torch.tensor([0, -1, -1, -1, 2, 1, -1])
    lab = population._epoch_labels(y, 4, 4)  # 4 classes, the last absent from the labels
    torch.testing.assert_close(lab.hard_scale, torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(lab.labelled, torch.tensor([1.0, 0, 0, 0, 1, 1, 0]))
    assert lab.onehot.shape == (4, 7) and lab.onehot[:, 1:4].sum() == 0 and lab.onehot[0, 0] == 1 and lab.onehot[2, 4] == 1
    torch.testing.assert_close(lab.onehot_value.sum(0), torch.tensor([4.0, 0, 0, 0, 1.5, 1.5, 0]))
    none = population._epoch_labels(torch.full((3,), -1), 4, 3)  # no labelled row: scale 1 / 1, no hard term
    assert none.hard_scale.tolist() == [1.0] and none.onehot.sum() == 0


def test_stacked_backward_gives_each_members_own_gradients():
    # The hand-written forward and backward against autograd on each lone model.
    models = [build_model("mlp", input_shape=(2, 6), num_classes=4, widths=[7, 5]) for _ in range(3)]
    x = torch.randn(6, 2, 6)
    upstream = torch.randn(3, 4, 6)  # dL_k / dlogits, [K, C, B]
    stack = StackedMLP(models)
    xa = torch.cat([x.flatten(1), torch.ones(6, 1)], 1)
    logits = stack.train_forward(xa)
    stack.backward(upstream.clone())
    for k, m in enumerate(models):
        out = m(x)
        torch.testing.assert_close(logits[k].t(), out, atol=1e-6, rtol=1e-5)
        (out * upstream[k].t()).sum().backward()
        for i, layer in enumerate(layer for layer in m.net if isinstance(layer, nn.Linear)):
            torch.testing.assert_close(stack.grads[i][k][:, :-1], layer.weight.grad, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(stack.grads[i][k][:, -1], layer.bias.grad, atol=1e-6, rtol=1e-5)
    with pytest.raises(RuntimeError, match="backward before train_forward"):
        stack.backward(upstream)  # its activations were used up


def test_non_finite_member_fails_alone():
    train, val = toy_data()
    cached = [TASK.predict(t, train.x) for t in teachers(1)]
    cfg = TrainConfig(epochs=2, batch_size=60, optimizer="sgd", momentum=0.0, lr=0.01, schedule="none", threads=1, device="cpu")
    members = [Member(student(), temperature=4.0, alpha=0.5, lr=0.01), Member(student(), temperature=4.0, alpha=0.5, lr=1e30)]
    results = fit_population(members, train, cfg, seed=SEED, teacher_logits=cached, task=TASK, val=val)
    assert results[0].error is None and len(results[0].history.epochs) == 2
    assert type(results[1].error).__name__ == "NonFiniteLossError" and "in epoch 1" in str(results[1].error)
    assert results[1].history.epochs == []  # no metrics for the epoch it diverged in, as the lone run
    # The one left keeps its own loss values, not the diverged member's: those of its lone run.
    _, history = lone(train, val, cfg, teachers(1), cached, temperature=4.0, alpha=0.5)
    for mine, theirs in zip(results[0].history.epochs, history.epochs):
        for key in ("train_loss", "train_hard", "train_soft", "val_accuracy"):
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-6), key
    # Every member diverging: each result says so (the loop ends without losing any).
    members = [Member(student(), temperature=4.0, alpha=0.5, lr=1e30) for _ in range(2)]
    results = fit_population(members, train, cfg, seed=SEED, teacher_logits=cached, task=TASK, val=val)
    assert [type(r.error).__name__ for r in results] == ["NonFiniteLossError"] * 2


def test_what_stacks():
    assert stack_problem(build_model("mnist1d_mlp", input_shape=(40,), num_classes=10)) is None
    assert "dropout" in stack_problem(build_model("mlp", input_shape=(12,), num_classes=3, dropout=0.2))
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    assert "not a plain MLP" in stack_problem(bn)
    odd = build_model("mlp", input_shape=(12,), num_classes=3, widths=[4])
    odd.net.append(nn.ReLU())  # a ReLU on the logits: not the stacked form
    assert "Linear + ReLU pairs" in stack_problem(odd)
    for layers in ([nn.Linear(12, 4), nn.ReLU(), nn.ReLU(), nn.Linear(4, 3)],   # two ReLUs in a row
                   [nn.Linear(12, 4), nn.Linear(4, 3), nn.ReLU()]):             # pairs out of order, a ReLU last
        odd = build_model("mlp", input_shape=(12,), num_classes=3, widths=[4])
        odd.net = nn.Sequential(nn.Flatten(1), *layers)
        assert "Linear + ReLU pairs" in stack_problem(odd), odd.net
    with pytest.raises(ValueError, match="cannot stack this model: it has dropout"):
        StackedMLP([build_model("mlp", input_shape=(12,), num_classes=3, dropout=0.2)])
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


@pytest.mark.parametrize("kind,momentum,nesterov", [("adam", 0.0, False), ("adamw", 0.0, False), ("sgd", 0.9, True),
                                                     ("sgd", 0.9, False), ("sgd", 0.0, False)])
@pytest.mark.parametrize("lrs,wds", [([0.1, 0.01, 0.003], [0.0, 0.01, 0.5]),   # one kernel call per member
                                     ([0.01, 0.01, 0.003], [0.1, 0.1, 0.0]),    # two members share a call
                                     ([0.01] * 3, [0.05] * 3)])                 # one call for all
def test_fused_and_elementwise_optimizers_agree_with_torch(kind, momentum, nesterov, lrs, wds):
    # Both forms of StackedOptimizer against torch.optim run member by member on the same gradients,
    # over two parameter blocks of different shapes (member = first index of each).
    g = torch.Generator().manual_seed(1)
    shapes = [(3, 7), (3, 2, 4)]
    p0 = [torch.randn(*s, generator=g) for s in shapes]
    grads = [[torch.randn(*s, generator=g) for s in shapes] for _ in range(4)]
    expected = [[], []]
    for k in range(3):
        params = [nn.Parameter(p[k].clone()) for p in p0]
        cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[kind]
        extra = {"momentum": momentum, "nesterov": nesterov} if kind == "sgd" else {}
        opt = cls(params, lr=lrs[k], weight_decay=wds[k], **extra)
        for step in grads:
            for param, grad in zip(params, step):
                param.grad = grad[k].clone()
            opt.step()
        for i, param in enumerate(params):
            expected[i].append(param.detach())
    for fused in (True, False):
        p = [t.clone() for t in p0]
        opt = StackedOptimizer(kind, momentum=momentum, nesterov=nesterov, fused=fused)
        assert (opt.kernel is getattr(torch, f"_fused_{kind}_")) if fused else opt.kernel is None
        for step in grads:
            opt.step(p, [grad.clone() for grad in step], lrs, wds)
        for i in range(2):
            torch.testing.assert_close(p[i], torch.stack(expected[i]), atol=1e-6, rtol=1e-6, msg=f"fused={fused}, block {i}")


def test_optimizer_rejects_mismatched_blocks():
    opt = StackedOptimizer("adam")
    with pytest.raises(ValueError, match="same shapes"):
        opt.step([torch.zeros(2, 3)], [torch.zeros(2, 4)], [0.1, 0.1], [0.0, 0.0])
    with pytest.raises(ValueError, match="one lr and one weight decay per member"):
        opt.step([torch.zeros(2, 3)], [torch.zeros(2, 3)], [0.1], [0.0, 0.0])


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
