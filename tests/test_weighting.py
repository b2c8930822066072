"""Teacher-weighting kinds and combination rules: golden values on hand-made logits, each expected
value computed here in NumPy (or by hand) from the formula in the docstring, never with the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from research.config import ConfigError, RunConfig, TrainConfig, parse
from research.data import Split
from research.distill import Distiller, Progress, build_distiller, kd_loss_terms
from research.distill.objectives import build_objective
from research.distill.objectives.weighting import WEIGHTINGS
from research.train import fit, make_optimizer

# 3 samples, 4 classes, 3 teachers; the last sample is unlabeled.
S = np.array([[0.5, 1.0, -1.0, 2.0], [3.0, 0.0, 1.0, -2.0], [0.2, 0.1, 0.0, -0.1]])
T0 = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, -1.0, 0.5, 0.0], [1.0, 1.0, 1.0, 1.0]])
T1 = np.array([[0.0, 3.0, 1.0, 1.0], [2.0, 2.0, -2.0, 0.0], [5.0, -5.0, 0.0, 0.0]])
T2 = np.array([[2.0, 0.0, 0.0, 6.0], [0.0, 1.0, 0.0, 1.0], [0.0, 2.0, 0.0, 0.0]])
Y = np.array([3, 0, -1])
PROGRESS = Progress(epoch=1, epochs=1, step=1, steps_per_epoch=1)


def sm(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def entropy(z):
    p = sm(z)
    return -(p * np.log(p)).sum(-1)


def ce_rows(z, y):
    return -np.log(sm(z)[np.arange(len(y)), y])


def kl_rows(p, q):
    return (p * (np.log(p) - np.log(q))).sum(-1)


def t64(*arrays):
    return [torch.tensor(a, dtype=torch.float64) for a in arrays]


def weights_of(kind, teachers, y=Y):
    w = WEIGHTINGS.build({"kind": kind}, num_teachers=len(teachers))
    return w(t64(*teachers), None if y is None else torch.tensor(y), PROGRESS), w


# ---------------------------------------------------------------- CA-MKD


def test_ca_mkd_weights_follow_the_published_formula_and_use_entropy_when_unlabeled():
    got, _ = weights_of("ca_mkd", [T0, T1, T2])
    # score: CE on the label for samples 0 and 1, the teacher's own entropy for the unlabeled sample 2
    score = np.stack([np.r_[ce_rows(t[:2], Y[:2]), entropy(t[2:])] for t in (T0, T1, T2)])  # [K, B]
    e = np.exp(score - score.max(0))
    want = ((1 - e / e.sum(0)) / 2).T  # (1 - softmax over teachers) / (K - 1), as [B, K]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    np.testing.assert_allclose(got.sum(1).numpy(), 1.0, rtol=1e-12)


def test_ca_mkd_two_teachers_by_hand():
    # K = 2: w_0 = 1 - e^CE0 / (e^CE0 + e^CE1) = sigmoid(CE1 - CE0): the teacher with the lower CE weighs more
    a = np.array([[2.0, 0.0]])  # CE on label 0: log(1 + e^-2)
    b = np.array([[0.0, 0.0]])  # CE: log 2
    got, _ = weights_of("ca_mkd", [a, b], y=np.array([0]))
    ce_a, ce_b = math.log(1 + math.exp(-2)), math.log(2)
    assert got[0, 0].item() == pytest.approx(1 / (1 + math.exp(ce_a - ce_b)), rel=1e-12)
    assert got[0, 0].item() > 0.5
    equal, _ = weights_of("ca_mkd", [a, a], y=np.array([1]))
    assert equal[0].tolist() == [0.5, 0.5]


def test_ca_mkd_without_labels_scores_by_entropy():
    got, _ = weights_of("ca_mkd", [T0, T1], y=None)
    h = np.stack([entropy(T0), entropy(T1)])
    want = (1 - np.exp(h) / np.exp(h).sum(0)).T
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


# ---------------------------------------------------------------- entropy


def test_entropy_weights_follow_the_formula():
    got, _ = weights_of("entropy", [T0, T1, T2], y=None)
    h = np.stack([entropy(T0), entropy(T1), entropy(T2)])
    want = ((1 - h / h.sum(0)) / 2).T
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_entropy_weights_by_hand():
    # K = 2: w_0 = H_1 / (H_0 + H_1). A uniform teacher on 4 classes has H = log 4.
    uniform, peaked = np.zeros((1, 4)), np.array([[1000.0, 0.0, 0.0, 0.0]])  # H(peaked) = 0 exactly
    got, _ = weights_of("entropy", [uniform, peaked], y=None)
    assert got[0].tolist() == [0.0, 1.0]  # all weight to the certain teacher
    both_certain, _ = weights_of("entropy", [peaked, peaked], y=None)
    assert both_certain[0].tolist() == [0.5, 0.5]  # no entropy anywhere: uniform, not 0/0


# ---------------------------------------------------------------- learned


def test_learned_weights_start_uniform_get_a_gradient_and_train_without_weight_decay():
    objective = build_objective("kd", num_teachers=3, weighting={"kind": "learned"}, alpha=0.0)
    assert objective.epoch_values() == pytest.approx({"weight_0": 1 / 3, "weight_1": 1 / 3, "weight_2": 1 / 3})
    s, t0, t1, t2 = (x.float() for x in t64(S, T0, T1, T2))
    s.requires_grad_(True)
    objective(s, [t0, t1, t2], torch.tensor(Y), PROGRESS)["loss"].backward()
    (param,) = list(objective.parameters())
    assert param.grad is not None and param.grad.abs().sum() > 0

    torch.manual_seed(0)
    teachers = [nn.Linear(12, 4).eval() for _ in range(3)]
    student = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    d = Distiller(student, teachers, build_objective("kd", num_teachers=3, weighting={"kind": "learned"}, combine="kl_sum"))
    cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, optimizer="adamw", weight_decay=0.5, device="cpu")
    (group,) = [g for g in make_optimizer(d.param_groups(), cfg).param_groups if any(p is d.objective.weighting_kind.logits for p in g["params"])]
    assert group["weight_decay"] == 0.0
    g = torch.Generator().manual_seed(1)
    split = Split(torch.randn(64, 12, generator=g), torch.randint(0, 4, (64,), generator=g))
    h = fit(d, split, cfg, seed=0, progress=False)
    last = [h.epochs[-1][f"objective_weight_{k}"] for k in range(3)]
    assert sum(last) == pytest.approx(1.0) and max(last) > 1 / 3 + 0.01  # moved off uniform


# ---------------------------------------------------------------- combination rules, each against its formula


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("combine", ["probs", "logits", "kl_sum"])
def test_combination_rules_match_their_formulas(combine, per_sample):
    T, alpha = 2.0, 0.25
    w = np.array([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0], [0.4, 0.4, 0.2]]) if per_sample else np.array([0.2, 0.5, 0.3])
    W = w if per_sample else np.broadcast_to(w, (3, 3))  # [B, K]
    ts = [T0, T1, T2]
    q = sm(S / T)
    if combine == "probs":
        kl = kl_rows(sum(W[:, [k]] * sm(t / T) for k, t in enumerate(ts)), q)
    elif combine == "logits":
        kl = kl_rows(sm(sum(W[:, [k]] * t for k, t in enumerate(ts)) / T), q)
    else:
        kl = sum(W[:, k] * kl_rows(sm(t / T), q) for k, t in enumerate(ts))
    lab = Y >= 0
    want = alpha * ce_rows(S[lab], Y[lab]).mean() + (1 - alpha) * T**2 * kl.mean()
    s, *tt = t64(S, T0, T1, T2)
    got = kd_loss_terms(s, tt, torch.tensor(Y), temperature=T, alpha=alpha, teacher_weights=torch.tensor(w), combine=combine)
    assert got.loss.item() == pytest.approx(want, rel=1e-12)
    assert got.soft.item() == pytest.approx(kl.mean(), rel=1e-12)


def test_kl_sum_and_probs_share_the_student_gradient_and_differ_by_the_jensen_gap():
    T = 3.0
    w = np.array([0.2, 0.5, 0.3])
    grads, losses = {}, {}
    for combine in ("probs", "kl_sum"):
        s, *tt = t64(S, T0, T1, T2)
        s.requires_grad_(True)
        terms = kd_loss_terms(s, tt, None, temperature=T, alpha=0.0, teacher_weights=w.tolist(), combine=combine)
        terms.loss.backward()
        grads[combine], losses[combine] = s.grad, terms.loss.item()
    torch.testing.assert_close(grads["probs"], grads["kl_sum"], rtol=1e-10, atol=1e-13)
    ps = [sm(t / T) for t in (T0, T1, T2)]
    mix = sum(wk * p for wk, p in zip(w, ps))
    gap = sum(wk * kl_rows(p, mix) for wk, p in zip(w, ps)).mean()  # sum_k w_k KL(p_k || p_mix), no student in it
    assert gap > 0 and losses["kl_sum"] - losses["probs"] == pytest.approx(T**2 * gap, rel=1e-9)


def test_logits_rule_is_the_normalised_weighted_geometric_mean():
    T = 2.0
    w = [0.2, 0.5, 0.3]
    geo = np.prod([sm(t / T) ** wk for wk, t in zip(w, (T0, T1, T2))], axis=0)
    geo = geo / geo.sum(-1, keepdims=True)
    s, *tt = t64(S, T0, T1, T2)
    got = kd_loss_terms(s, tt, None, temperature=T, alpha=0.0, teacher_weights=w, combine="logits").soft.item()
    assert got == pytest.approx(kl_rows(geo, sm(S / T)).mean(), rel=1e-12)


# ---------------------------------------------------------------- through the objective, logged per epoch


def test_kd_with_ca_mkd_mixes_each_sample_with_its_own_weights():
    objective = build_objective("kd", num_teachers=3, weighting={"kind": "ca_mkd"}, temperature=2.0, alpha=0.0).double()
    s, *tt = t64(S, T0, T1, T2)
    got = objective(s, tt, torch.tensor(Y), PROGRESS)["loss"].item()
    score = np.stack([np.r_[ce_rows(t[:2], Y[:2]), entropy(t[2:])] for t in (T0, T1, T2)])
    W = ((1 - np.exp(score) / np.exp(score).sum(0)) / 2).T
    p = sum(W[:, [k]] * sm(t / 2.0) for k, t in enumerate((T0, T1, T2)))
    assert got == pytest.approx(4.0 * kl_rows(p, sm(S / 2.0)).mean(), rel=1e-12)


def test_per_sample_weights_are_logged_per_epoch_as_distributions():
    torch.manual_seed(0)
    teachers = [nn.Linear(12, 4).eval() for _ in range(2)]
    d = Distiller(nn.Linear(12, 4), teachers, build_objective("kd", num_teachers=2, weighting={"kind": "entropy"},
                                                               temperature={"kind": "entropy"}))
    g = torch.Generator().manual_seed(1)
    split = Split(torch.randn(40, 12, generator=g), torch.full((40,), -1))
    h = fit(d, split, TrainConfig(epochs=2, batch_size=16, device="cpu"), seed=0, progress=False)
    for e in h.epochs:
        for k in (0, 1):
            assert e[f"objective_weight_{k}_min"] <= e[f"objective_weight_{k}_mean"] <= e[f"objective_weight_{k}_max"]
        assert e["objective_weight_0_mean"] + e["objective_weight_1_mean"] == pytest.approx(1.0)
        assert 1.0 <= e["objective_temperature_min"] <= e["objective_temperature_max"] <= 8.0
    # the teachers are fixed and the inputs the same each epoch: the same distribution both epochs
    assert h.epochs[0]["objective_weight_0_mean"] == pytest.approx(h.epochs[1]["objective_weight_0_mean"])
    # the fixed rule logs nothing (its weights are in the run's parameters)
    assert build_objective("kd", num_teachers=2).epoch_values() == {}


# ---------------------------------------------------------------- config


def test_weighting_config_loads_and_refuses_in_one_line():
    teachers = [{"model": {"name": "mlp"}}, {"model": {"name": "mlp"}}]
    cfg = parse(RunConfig, {"teachers": teachers, "distill": {"weighting": {"kind": "ca_mkd"}, "combine": "kl_sum"}})
    assert cfg.distill.weighting == {"kind": "ca_mkd"} and cfg.distill.combine == "kl_sum"
    d = build_distiller(nn.Linear(12, 4), [nn.Linear(12, 4), nn.Linear(12, 4)], cfg.distill)
    assert d.objective.weighting_kind.kind == "ca_mkd" and d.objective.fixed_weights is None
    for distill, match in [
        ({"weighting": {"kind": "ca_mkd"}, "teacher_weights": [1, 2]},
         r"^config: distill: objective 'kd': teacher_weights: only the fixed weighting takes given weights; weighting kind 'ca_mkd'"),
        ({"weighting": {"kind": "fixed", "weights": [1, 2]}}, r"weighting.weights: give fixed weights as teacher_weights$"),
        ({"weighting": {"kind": "oracle"}}, r"^config: distill.weighting: unknown weighting kind 'oracle'; available: ca_mkd, entropy, fixed, learned$"),
        ({"weighting": {"kind": "learned", "lr": 1}}, r"weighting kind 'learned' got unknown knob\(s\) 'lr'; accepted: \(none\)$"),
        ({"weighting": "ca_mkd"}, r"^config: distill.weighting: Input should be a mapping"),
        ({"combine": "mean"}, r"distill.combine"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse(RunConfig, {"teachers": teachers, "distill": distill})
