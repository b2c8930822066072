"""Temperature kinds: golden values on hand-made logits, each expected value computed here in NumPy
(or by hand) from the formula in the kind's docstring, never with the code under test."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from research.config import ConfigError, RunConfig, TrainConfig, parse
from research.data import Split
from research.distill import Distiller, Progress, build_distiller
from research.distill.objectives import build_objective
from research.distill.objectives.components import EpochStats
from research.distill.objectives.temperature import TEMPERATURES, parse_temperature
from research.train import fit

# Hand-made: 3 samples, 4 classes. Teacher row 0 is [1, 2, 3, 4] - 2.5 = mean 0, row 2 is uniform.
S = np.array([[0.5, 1.0, -1.0, 2.0], [3.0, 0.0, 1.0, -2.0], [0.2, 0.1, 0.0, -0.1]])
T0 = np.array([[1.0, 2.0, 3.0, 4.0], [4.0, -1.0, 0.5, 0.0], [1.0, 1.0, 1.0, 1.0]])
T1 = np.array([[0.0, 3.0, 1.0, 1.0], [2.0, 2.0, -2.0, 0.0], [5.0, -5.0, 0.0, 0.0]])
Y = np.array([3, 0, -1])  # the last sample is unlabeled


def sm(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def kl_rows(p, q):
    return (p * (np.log(p) - np.log(q))).sum(-1)


def ce_mean(s, y):
    lab = y >= 0
    return -np.log(sm(s[lab])[np.arange(lab.sum()), y[lab]]).mean()


def np_kd(s, teachers, y, T_rows, alpha, scale_rows=None, s_soft=None):
    """alpha * CE(raw s) + (1 - alpha) * mean_i(scale_i * KL(mixture of p_k at T_i || softmax(s_i / T_i))), uniform mixture."""
    T = np.broadcast_to(np.asarray(T_rows, float).reshape(-1, 1), (s.shape[0], 1))
    s_soft = s if s_soft is None else s_soft
    p = sum(sm(t / T) for t in teachers) / len(teachers)
    kl = kl_rows(p, sm(s_soft / T))
    scale = (T[:, 0] ** 2) if scale_rows is None else np.asarray(scale_rows)
    return alpha * ce_mean(s, y) + (1 - alpha) * (scale * kl).mean()


def tensors(*arrays, grad=False):
    out = [torch.tensor(a, dtype=torch.float64) for a in arrays]
    if grad:
        out[0].requires_grad_(True)
    return out


def progress(step, epochs=2, steps_per_epoch=2):
    epoch = (step - 1) // steps_per_epoch + 1
    return Progress(epoch=epoch, epochs=epochs, step=step, steps_per_epoch=steps_per_epoch)


def loss_of(temperature, teachers=(T0,), y=Y, alpha=0.3, prog=None, s=S):
    objective = build_objective("kd", num_teachers=len(teachers), temperature=temperature, alpha=alpha).double()
    st, *ts = tensors(s, *teachers, grad=True)
    terms = objective(st, ts, torch.tensor(y), prog)
    return objective, st, terms


# ---------------------------------------------------------------- fixed


def test_fixed_number_and_fixed_spec_are_the_same_loss_bit_for_bit():
    _, s1, a = loss_of(3.0)
    _, s2, b = loss_of({"kind": "fixed", "value": 3.0})
    a["loss"].backward()
    b["loss"].backward()
    assert a["loss"].item() == b["loss"].item() and torch.equal(s1.grad, s2.grad)
    assert a["loss"].item() == pytest.approx(np_kd(S, [T0], Y, 3.0, 0.3), rel=1e-12)


def test_a_number_keeps_the_loss_of_the_first_release_exactly():
    """The float path runs the same torch operations as before temperature kinds: same bits."""
    import torch.nn.functional as F

    _, _, terms = loss_of(4.0, teachers=(T0, T1), alpha=0.1)
    s, t0, t1 = tensors(S, T0, T1)
    w = torch.full((2,), 0.5, dtype=torch.float64).reshape(2, 1, 1)
    log_p = torch.logsumexp(F.log_softmax(torch.stack([t0, t1]) / 4.0, dim=-1) + torch.log(w), dim=0)
    soft = F.kl_div(F.log_softmax(s / 4.0, dim=-1), log_p, reduction="batchmean", log_target=True)
    y = torch.tensor(Y)
    hard = F.cross_entropy(s[y >= 0], y[y >= 0])
    assert terms["loss"].item() == (0.1 * hard + 0.9 * 4.0**2 * soft).item()


# ---------------------------------------------------------------- annealed


@pytest.mark.parametrize("schedule, step, want_T", [
    # 2 epochs x 2 steps: f = (step - 1) / 4. start 8, end 2.
    ("linear", 1, 8.0),                                        # f = 0
    ("linear", 2, 6.5),                                        # f = 1/4: 2 + 6 * 3/4
    ("linear", 3, 5.0),                                        # f = 1/2
    ("cosine", 2, 2 + 6 * (1 + math.sqrt(2) / 2) / 2),         # f = 1/4: cos(pi/4) = sqrt(2)/2
    ("cosine", 3, 5.0),                                        # f = 1/2: cos(pi/2) = 0
    ("cosine", 4, 2 + 6 * (1 - math.sqrt(2) / 2) / 2),         # f = 3/4
])
def test_annealed_temperature_follows_its_schedule(schedule, step, want_T):
    spec = {"kind": "annealed", "start": 8.0, "end": 2.0, "schedule": schedule}
    objective, _, terms = loss_of(spec, prog=progress(step))
    assert terms["loss"].item() == pytest.approx(np_kd(S, [T0], Y, want_T, 0.3), rel=1e-12)
    assert objective.epoch_values()["temperature"] == pytest.approx(want_T)


def test_annealed_needs_the_progress_and_logs_the_epochs_range():
    with pytest.raises(ValueError, match="needs the training progress"):
        loss_of({"kind": "annealed"})
    objective = build_objective("kd", num_teachers=1, temperature={"kind": "annealed", "start": 8, "end": 2}).double()
    st, t0 = tensors(S, T0)
    for step in (1, 2, 3, 4):
        objective(st, [t0], torch.tensor(Y), progress(step))
        if step == 2:  # epoch 1: steps 1, 2 -> T = 8, 6.5
            assert objective.epoch_values() == {"temperature_mean": 7.25, "temperature_min": 6.5, "temperature_max": 8.0,
                                                "temperature": 6.5}
    # epoch 2 alone (steps 3, 4 -> T = 5, 3.5), not mixed with epoch 1
    assert objective.epoch_values() == {"temperature_mean": 4.25, "temperature_min": 3.5, "temperature_max": 5.0, "temperature": 3.5}


# ---------------------------------------------------------------- logit standardisation and NormKD


def np_standardize(z):
    return (z - z.mean(-1, keepdims=True)) / (z.std(-1, ddof=1, keepdims=True) + 1e-7)


def test_standardize_on_a_row_by_hand():
    from research.distill.objectives.temperature.standardized import standardize

    # [1, 2, 3, 4]: mean 2.5, sample std sqrt(5/3); 1 - 2.5 = -1.5
    got = standardize(torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64))
    sd = math.sqrt(5 / 3)
    assert got[0].tolist() == pytest.approx([-1.5 / sd, -0.5 / sd, 0.5 / sd, 1.5 / sd], rel=1e-6)


def test_standardized_kd_at_a_base_temperature():
    _, _, terms = loss_of({"kind": "standardized", "base": 2.0}, teachers=(T0, T1), prog=progress(1))
    want = np_kd(S, [np_standardize(T0), np_standardize(T1)], Y, 2.0, 0.3, s_soft=np_standardize(S))
    assert terms["loss"].item() == pytest.approx(want, rel=1e-10)
    # the hard term is the CE of the RAW student logits
    assert terms["hard"].item() == pytest.approx(ce_mean(S, Y), rel=1e-12)
    # invariant to a shift and a scale of the teacher's logits (what standardisation is for)
    _, _, shifted = loss_of({"kind": "standardized", "base": 2.0}, teachers=(3 * T0 + 7, T1), prog=progress(1))
    assert shifted["loss"].item() == pytest.approx(terms["loss"].item(), rel=1e-6)


def test_normkd_is_the_published_per_sample_temperature_formula():
    """NormKD as its authors write it: T_i = T_norm * std(z_i) per side, KL_i * (T_norm * std(t_i))^2."""
    t_norm = 1.5
    _, _, terms = loss_of({"kind": "normkd", "t_norm": t_norm}, alpha=0.0, prog=progress(1))
    tt = t_norm * T0.std(-1, ddof=1, keepdims=True)
    ts = t_norm * S.std(-1, ddof=1, keepdims=True)
    want = (kl_rows(sm(T0[:2] / tt[:2]), sm(S[:2] / ts[:2])) * tt[:2, 0] ** 2)
    # row 2 of T0 is constant (std 0): NormKD's own formula divides by zero there; ours keeps the 1e-7
    # and the row's scale is 0, so it adds nothing. Mean over all 3 rows.
    assert terms["loss"].item() == pytest.approx(want.sum() / 3, rel=1e-6)


def test_normkd_and_standardized_share_the_softmax_and_differ_in_scale():
    _, _, a = loss_of({"kind": "standardized", "base": 1.5}, teachers=(T1,), alpha=0.0, prog=progress(1))
    _, _, b = loss_of({"kind": "normkd", "t_norm": 1.5}, teachers=(T1,), alpha=0.0, prog=progress(1))
    assert a["soft"].item() == pytest.approx(b["soft"].item(), rel=1e-12)  # same KL per row, averaged
    kl = kl_rows(sm(np_standardize(T1) / 1.5), sm(np_standardize(S) / 1.5))
    assert a["loss"].item() == pytest.approx(1.5**2 * kl.mean(), rel=1e-9)
    assert b["loss"].item() == pytest.approx((kl * (1.5 * T1.std(-1, ddof=1)) ** 2).mean(), rel=1e-9)


def test_standardized_logs_the_effective_per_sample_temperature():
    objective, _, _ = loss_of({"kind": "standardized", "base": 2.0}, prog=progress(1))
    stds = T0.std(-1, ddof=1) * 2.0  # [2 sqrt(5/3), ..., 0]
    v = objective.epoch_values()
    assert v["temperature_mean"] == pytest.approx(stds.mean()) and v["temperature_max"] == pytest.approx(stds.max())
    assert v["temperature_min"] == pytest.approx(0.0, abs=1e-12)


# ---------------------------------------------------------------- CTKD: learnable temperature with gradient reversal


def ctkd_T(theta):
    return 1.0 + 20.0 / (1.0 + math.exp(-theta))


def np_loss_at_theta(theta, alpha=0.3):
    return np_kd(S, [T0], Y, ctkd_T(theta), alpha)


def numeric_dtheta(theta, h=1e-5):
    return (np_loss_at_theta(theta + h) - np_loss_at_theta(theta - h)) / (2 * h)


def test_learnable_starts_near_15_6_and_its_loss_is_kd_at_that_temperature():
    objective, _, terms = loss_of({"kind": "learnable"}, prog=progress(1))
    assert ctkd_T(1.0) == pytest.approx(15.6211, abs=1e-4)
    assert terms["loss"].item() == pytest.approx(np_loss_at_theta(1.0), rel=1e-10)
    assert objective.epoch_values()["temperature"] == pytest.approx(ctkd_T(1.0))


@pytest.mark.parametrize("epochs_done, factor", [(0.0, 0.0), (5.0, -0.5), (10.0, -1.0), (14.0, -1.0)])
def test_learnable_theta_gradient_is_reversed_by_a_cosine_factor(epochs_done, factor):
    """The GRL factor (0 -> -1 by a cosine over warmup_epochs = 10) times the plain dL/dtheta (finite differences)."""
    steps_per_epoch = 4
    step = int(epochs_done * steps_per_epoch) + 1  # epochs done before this step = (step - 1) / steps_per_epoch
    prog = Progress(epoch=int(epochs_done) + 1, epochs=20, step=step, steps_per_epoch=steps_per_epoch)
    objective, st, terms = loss_of({"kind": "learnable", "warmup_epochs": 10}, prog=prog)
    terms["loss"].backward()
    theta_grad = objective.temperature_kind.theta.grad.item()
    plain = numeric_dtheta(1.0)
    assert plain != 0
    assert theta_grad == pytest.approx(factor * plain, rel=1e-5, abs=1e-12)
    if factor == 0:
        assert theta_grad == 0.0
    if factor == -1.0:
        assert math.copysign(1, theta_grad) == -math.copysign(1, plain)
    # the student's gradient is that of KD at the same T (the reversal touches theta only)
    _, s_fixed, fixed_terms = loss_of(ctkd_T(1.0))
    fixed_terms["loss"].backward()
    torch.testing.assert_close(st.grad, s_fixed.grad, rtol=1e-10, atol=1e-12)


def test_learnable_temperature_trains_and_is_logged_per_epoch():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(12, 4)).eval()
    student = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    d = Distiller(student, teacher, build_objective("kd", num_teachers=1, temperature={"kind": "learnable", "warmup_epochs": 1}))
    g = torch.Generator().manual_seed(1)
    split = Split(torch.randn(64, 12, generator=g), torch.randint(0, 4, (64,), generator=g))
    h = fit(d, split, TrainConfig(epochs=3, batch_size=16, lr=0.05, optimizer="adamw", weight_decay=0.5, device="cpu"),
            seed=0, progress=False)
    temps = [e["objective_temperature"] for e in h.epochs]
    assert len(set(temps)) == 3 and temps[0] != pytest.approx(ctkd_T(1.0))  # theta moved every epoch
    assert [e["objective_grl_factor"] for e in h.epochs][-1] == -1.0  # past the 1-epoch warmup
    for e in h.epochs:
        assert e["objective_temperature_min"] <= e["objective_temperature_mean"] <= e["objective_temperature_max"]
    assert 1.0 <= temps[-1] <= 21.0


# ---------------------------------------------------------------- per sample from the teachers' entropy


def test_entropy_temperature_maps_confident_teachers_to_t_max():
    t_min, t_max = 1.0, 9.0
    objective, _, terms = loss_of({"kind": "entropy", "t_min": t_min, "t_max": t_max}, teachers=(T0, T1), prog=progress(1))
    p0, p1 = sm(T0), sm(T1)
    h = ((-(p0 * np.log(p0)).sum(-1)) + (-(p1 * np.log(p1)).sum(-1))) / 2 / np.log(4)
    T_rows = t_max - (t_max - t_min) * h
    assert terms["loss"].item() == pytest.approx(np_kd(S, [T0, T1], Y, T_rows, 0.3), rel=1e-10)
    v = objective.epoch_values()
    assert v["temperature_mean"] == pytest.approx(T_rows.mean()) and v["temperature_min"] == pytest.approx(T_rows.min())


def test_entropy_temperature_ends_by_hand():
    # a uniform teacher row has normalised entropy 1 -> t_min; a one-hot-like row ~0 -> t_max
    objective = build_objective("kd", num_teachers=1, temperature={"kind": "entropy", "t_min": 2.0, "t_max": 6.0}).double()
    t = torch.tensor([[0.0, 0.0, 0.0], [60.0, 0.0, 0.0]], dtype=torch.float64)
    soft = objective.temperature_kind(t, [t], None)
    assert soft.temperature[:, 0].tolist() == pytest.approx([2.0, 6.0], abs=1e-9)


# ---------------------------------------------------------------- config, registry, per-epoch statistics


def test_a_temperature_spec_loads_from_config_with_one_line_errors():
    cfg = parse(RunConfig, {"distill": {"temperature": {"kind": "annealed", "start": 8, "end": 2, "schedule": "cosine"}}})
    assert cfg.distill.temperature == {"kind": "annealed", "start": 8.0, "end": 2.0, "schedule": "cosine"}
    assert parse(RunConfig, {"distill": {"temperature": 4}}).distill.temperature == 4.0
    for value, match in [
        (0, r"^config: distill.temperature: Input should be greater than 0 \(got 0\)$"),
        ({"kind": "annealed", "end": -1}, r"^config: distill.temperature: temperature kind 'annealed': end: .*greater than 0 \(got -1\)$"),
        ({"kind": "warm"}, r"unknown temperature kind 'warm'; available: annealed, entropy, fixed, learnable, normkd, standardized$"),
        ({"kind": "entropy", "t_min": 9}, r"t_min \(9.0\) must not exceed t_max \(8.0\)$"),
        ({"kind": "learnable", "beta": 1}, r"got unknown knob\(s\) 'beta'; accepted: t_min, t_range, init, warmup_epochs$"),
        ({"start": 3}, r"needs kind: one of"),
        ("warm", r"a number > 0 or a mapping"),
    ]:
        with pytest.raises(ConfigError, match=match):
            parse(RunConfig, {"distill": {"temperature": value}})


def test_every_kind_builds_from_its_name_alone_with_a_distiller():
    for kind in TEMPERATURES.available():
        cfg = parse(RunConfig, {"distill": {"temperature": {"kind": kind}}})
        d = build_distiller(nn.Linear(12, 4), [nn.Linear(12, 4)], cfg.distill)
        assert d.objective.temperature_kind.kind == kind
    assert parse_temperature("2.5") == 2.5


def test_epoch_stats_windows_by_epoch():
    stats = EpochStats()
    stats.add(torch.tensor([1.0, 2.0]), 1)
    stats.add(torch.tensor([6.0]), 1)
    assert stats.values("t") == {"t_mean": 3.0, "t_min": 1.0, "t_max": 6.0}
    assert stats.values("t") == {"t_mean": 3.0, "t_min": 1.0, "t_max": 6.0}  # reading changes nothing
    stats.add(torch.tensor([[0.2, 0.8], [0.4, 0.6]]), 2)  # a new epoch: a fresh window, per column
    assert stats.values("w") == pytest.approx({"w_0_mean": 0.3, "w_0_min": 0.2, "w_0_max": 0.4,
                                               "w_1_mean": 0.7, "w_1_min": 0.6, "w_1_max": 0.8})


def test_per_sample_temperatures_are_not_recorded_in_eval_mode():
    objective, st, _ = loss_of({"kind": "entropy"}, prog=progress(1))
    before = objective.epoch_values()
    objective.eval()
    objective(st, [torch.tensor(T1)], torch.tensor(Y), progress(3))
    assert objective.epoch_values() == before
