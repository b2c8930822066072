"""Distillation objectives: the registry, their config, and one contract suite over every registered objective.

A new objective is covered by the contract tests below without edits: they
parametrize over ``available_objectives()`` and build each from its defaults.
"""

from __future__ import annotations

import math
from typing import Annotated

import numpy as np
import pytest
import torch
from pydantic import Field
from torch import nn

from research.config import ConfigError, DistillConfig, RunConfig, TrainConfig, apply_overrides, parse
from research.data import Split
from research.distill import Distiller, Progress, build_distiller, kd_loss, kd_loss_terms
from research.distill import objectives as obj_mod
from research.distill.objectives import (
    Objective,
    available_objectives,
    build_objective,
    objective_knob_names,
    register_objective,
    validate_objective_args,
)
from research.distill.objectives.kd import KD
from research.distill.objectives.temperature import TEMPERATURES
from research.distill.objectives.weighting import WEIGHTINGS
from research.train import fit, make_optimizer, train_step

B, C = 8, 5


def teacher_net(seed: int) -> nn.Module:
    """A teacher with BatchNorm and dropout: train mode would change its buffers and outputs."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, C))
    net.train()
    with torch.no_grad():  # non-trivial running statistics, as a trained teacher has
        net(torch.randn(64, 12) * 2 + 1)
    return net.eval()


def toy_split(n=64, seed=0, unlabeled=0) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    y = (x[:, :C].argmax(1)).long()
    if unlabeled:
        y[-unlabeled:] = -1
    return Split(x, y)


def step_inputs(k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(B, C, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    ts = [(torch.randn(B, C, generator=g, dtype=torch.float64) * 2).requires_grad_(True) for _ in range(k)]
    y = torch.randint(0, C, (B,), generator=g)
    y[-2:] = -1  # two unlabeled samples, as in a transfer set
    return s, ts, y


PROGRESS = Progress(epoch=2, epochs=3, step=5, steps_per_epoch=4)


# ---------------------------------------------------------------- contract checks (also run on test-only objectives)


def check_finite_and_gradients_reach_only_the_student(name: str, k: int, objective: Objective | None = None) -> None:
    objective = objective or build_objective(name, num_teachers=k).double()
    s, ts, y = step_inputs(k)
    terms = objective(s, ts, y, PROGRESS)
    assert terms["loss"].dim() == 0 and math.isfinite(terms["loss"].item()), terms
    for key, v in terms.items():
        assert math.isfinite(float(v.detach())), (key, v)
        if key != "loss":
            assert not v.requires_grad, f"{key} must be detached (only 'loss' is back-propagated)"
    terms["loss"].backward()
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    assert all(t.grad is None for t in ts), "a gradient reached the teachers' logits"
    for p in objective.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def check_teachers_bit_identical_and_optimizer_sees_student_and_objective(name: str, objective_factory=None) -> None:
    teachers = [teacher_net(1), teacher_net(2)]
    before = [{k: v.clone() for k, v in t.state_dict().items()} for t in teachers]
    torch.manual_seed(3)
    student = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, C))
    objective = objective_factory(2) if objective_factory else build_objective(name, num_teachers=2)
    d = Distiller(student, teachers, objective)
    opt = make_optimizer(d.param_groups(), TrainConfig(weight_decay=0.1, optimizer="adamw"))
    on_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert on_opt == {id(p) for p in student.parameters()} | {id(p) for p in objective.parameters()}
    d.train(True)
    assert not any(t.training for t in teachers)
    split = toy_split(16, unlabeled=4)
    out = train_step(d, opt, split.x, split.y, None, PROGRESS)
    assert math.isfinite(out.losses["loss"].item())
    for t, b in zip(teachers, before):
        assert all(torch.equal(v, b[k]) for k, v in t.state_dict().items())
        assert all(p.grad is None for p in t.parameters())
        assert not t.training


def check_deterministic(name: str, k: int, objective_factory=None) -> None:
    def once():
        torch.manual_seed(11)
        objective = (objective_factory(k) if objective_factory else build_objective(name, num_teachers=k)).double()
        s, ts, y = step_inputs(k, seed=4)
        terms = objective(s, ts, y, PROGRESS)
        terms["loss"].backward()
        return {key: float(v.detach()) for key, v in terms.items()}, s.grad.clone()

    (t1, g1), (t2, g2) = once(), once()
    assert t1 == t2 and torch.equal(g1, g2)


# ---------------------------------------------------------------- the contract suite over the registry


@pytest.mark.parametrize("name", available_objectives())
@pytest.mark.parametrize("k", [1, 3])
def test_contract_finite_loss_and_gradients_only_into_the_student(name, k):
    check_finite_and_gradients_reach_only_the_student(name, k)


@pytest.mark.parametrize("name", available_objectives())
def test_contract_teachers_unchanged_after_a_step_and_optimizer_sees_student_and_objective_only(name):
    check_teachers_bit_identical_and_optimizer_sees_student_and_objective(name)


@pytest.mark.parametrize("name", available_objectives())
@pytest.mark.parametrize("k", [1, 2])
def test_contract_deterministic_given_a_seed(name, k):
    check_deterministic(name, k)


@pytest.mark.parametrize("name", [n for n in available_objectives() if "alpha" in objective_knob_names(n)])
def test_contract_continuous_in_alpha_at_both_ends(name):
    s, ts, y = step_inputs(2, seed=6)
    for a in (0.0, 1.0):
        near = a + (1e-7 if a == 0 else -1e-7)
        at = build_objective(name, num_teachers=2, alpha=a).double()(s, ts, y, PROGRESS)["loss"].item()
        by = build_objective(name, num_teachers=2, alpha=near).double()(s, ts, y, PROGRESS)["loss"].item()
        assert by == pytest.approx(at, rel=1e-5, abs=1e-9), (a, at, by)


@pytest.mark.parametrize("name", available_objectives())
def test_contract_buildable_from_a_config_naming_only_the_objective(name):
    cfg = DistillConfig(objective=name)
    d = build_distiller(nn.Linear(12, C), [teacher_net(0)], cfg)
    assert d.objective.num_teachers == 1 and type(d.objective) is obj_mod.objective_class(name)


@pytest.mark.parametrize("name", available_objectives())
def test_contract_refuses_a_wrong_number_of_teachers_and_a_stacked_tensor(name):
    objective = build_objective(name, num_teachers=2)
    s, ts, y = step_inputs(3)
    with pytest.raises(ValueError, match="teacher"):
        objective(s.float(), [t.float() for t in ts], y, PROGRESS)
    with pytest.raises(ValueError, match="list"):
        objective(s.float(), torch.stack([t.float() for t in ts[:2]]), y, PROGRESS)


# ---------------------------------------------------------------- the same suite over every temperature and weighting kind
# kd composes a temperature kind and a weighting kind (research/distill/objectives/temperature/ and
# weighting/); a new kind is covered here without edits. learnable parameters (CTKD's theta, learned
# weights) must reach the optimizer and stay finite, and the teachers stay untouched.


def kind_factory(temperature=None, weighting=None, combine="probs"):
    def make(k):
        knobs = {"combine": combine}
        if temperature is not None:
            knobs["temperature"] = {"kind": temperature}
        if weighting is not None:
            knobs["weighting"] = {"kind": weighting}
        return build_objective("kd", num_teachers=k, **knobs)
    return make


@pytest.mark.parametrize("kind", TEMPERATURES.available())
@pytest.mark.parametrize("k", [1, 3])
def test_contract_over_every_temperature_kind(kind, k):
    make = kind_factory(temperature=kind)
    objective = make(k).double()
    check_finite_and_gradients_reach_only_the_student("kd", k, objective)
    if list(objective.parameters()):  # e.g. CTKD's theta: it gets a (finite, non-zero) gradient
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.parameters())
    check_teachers_bit_identical_and_optimizer_sees_student_and_objective("kd", make)
    check_deterministic("kd", k, make)


@pytest.mark.parametrize("kind", WEIGHTINGS.available())
@pytest.mark.parametrize("combine", ["probs", "logits", "kl_sum"])
def test_contract_over_every_weighting_kind_and_combination_rule(kind, combine):
    make = kind_factory(weighting=kind, combine=combine)
    objective = make(3).double()
    check_finite_and_gradients_reach_only_the_student("kd", 3, objective)
    if list(objective.parameters()):  # learned weights get a gradient
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in objective.parameters())
    check_teachers_bit_identical_and_optimizer_sees_student_and_objective("kd", make)
    check_deterministic("kd", 2, make)
    check_finite_and_gradients_reach_only_the_student("kd", 1, make(1).double())  # one teacher: trivially weight 1


# ---------------------------------------------------------------- kd: the first objective, the same numbers


def test_kd_objective_equals_kd_loss_terms_and_the_independent_formula():
    s, ts, y = step_inputs(3, seed=7)
    objective = build_objective("kd", num_teachers=3, temperature=3.0, alpha=0.4, teacher_weights=[2, 1, 1], combine="logits")
    terms = objective(s, ts, y)
    ref = kd_loss_terms(s, ts, y, temperature=3.0, alpha=0.4, teacher_weights=[0.5, 0.25, 0.25], combine="logits")
    assert terms["loss"].item() == ref.loss.item() and terms["soft"].item() == ref.soft.item()
    # the formula in NumPy, float64: 0.4 * CE(labelled) + 0.6 * 9 * KL(softmax(sum w t / 3) || softmax(s / 3))
    sn, tn, yn = s.detach().numpy(), [t.detach().numpy() for t in ts], y.numpy()

    def sm(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p, q = sm((0.5 * tn[0] + 0.25 * tn[1] + 0.25 * tn[2]) / 3), sm(sn / 3)
    kl = (p * (np.log(p) - np.log(q))).sum(1).mean()
    lab = yn >= 0
    ce = -np.log(sm(sn[lab])[np.arange(lab.sum()), yn[lab]]).mean()
    assert terms["loss"].item() == pytest.approx(0.4 * ce + 0.6 * 9 * kl, rel=1e-12)


def test_teacher_logits_are_an_explicit_list_never_a_guess_from_the_dimensions():
    s = torch.randn(B, C)
    t = torch.randn(B, C)
    assert kd_loss(s, t, None, temperature=2.0, alpha=0.0).item() == kd_loss(s, [t], None, temperature=2.0, alpha=0.0).item()
    with pytest.raises(ValueError, match=r"one teacher's \[B, C\]"):
        kd_loss(s, torch.stack([t, t]), None, temperature=2.0, alpha=0.0)  # [K, B, C] is no longer read as K teachers
    with pytest.raises(ValueError, match="differ in shape"):
        kd_loss(s, [t, t[:, :3]], None, temperature=2.0, alpha=0.0)


def test_per_sample_teacher_weights_follow_the_mixture_formula():
    """The hook a weighting rule overrides may return [B, K] weights; each row mixes that sample's teachers."""
    g = torch.Generator().manual_seed(8)
    s, t0, t1 = (torch.randn(4, 3, generator=g, dtype=torch.float64) for _ in range(3))
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.2, 0.8]], dtype=torch.float64)
    T = 2.0
    got = kd_loss_terms(s, [t0, t1], None, temperature=T, alpha=0.0, teacher_weights=w).soft.item()
    p = w[:, :1] * torch.softmax(t0 / T, 1) + w[:, 1:] * torch.softmax(t1 / T, 1)
    want = (p * (p.log() - torch.log_softmax(s / T, 1))).sum(1).mean().item()
    assert got == pytest.approx(want, rel=1e-12)


# ---------------------------------------------------------------- registry and config


def test_registry_validates_knobs_from_the_signature_in_one_line():
    assert "kd" in available_objectives()
    assert objective_knob_names("kd") == ["temperature", "alpha", "teacher_weights", "combine", "weighting"]
    assert validate_objective_args("kd", {"temperature": "8"}) == {"temperature": 8.0}  # typed: coerced as pydantic does
    for knobs, match in [
        ({"alpha": 1.5}, r"objective 'kd': alpha: .*less than or equal to 1"),
        ({"temperature": 0}, r"temperature: .*greater than 0"),
        ({"beta": 1.0}, r"unknown knob\(s\) 'beta'; accepted: temperature, alpha"),
        ({"combine": "mean"}, r"combine"),
    ]:
        with pytest.raises(ValueError, match=match):
            validate_objective_args("kd", knobs)
    with pytest.raises(ValueError, match="unknown objective 'nope'; available: .*kd"):
        build_objective("nope", num_teachers=1)


@pytest.fixture
def scratch_registry(monkeypatch):
    """Objectives registered by a test live only in this test."""
    monkeypatch.setattr(obj_mod, "_REGISTRY", dict(obj_mod._REGISTRY))


def test_registration_refuses_a_broken_signature(scratch_registry):
    with pytest.raises(ValueError, match="already registered"):
        register_objective("kd")(KD)
    with pytest.raises(ValueError, match="subclass of Objective"):
        register_objective("plain")(nn.Module)

    def declare(init):
        return type("Bad", (Objective,), {"__init__": init, "forward": lambda self, *a: {}})

    def no_teachers(self, temperature: float = 1.0): ...
    def untyped(self, num_teachers, *, beta=1.0): ...
    def no_default(self, num_teachers, *, beta: float): ...
    def var_kw(self, num_teachers, **knobs: float): ...

    for init, match in [(no_teachers, "num_teachers"), (untyped, "annotation"), (no_default, "default"), (var_kw, "named")]:
        with pytest.raises(ValueError, match=match):
            register_objective("bad")(declare(init))


def test_existing_distill_config_keys_load_as_before():
    cfg = parse(RunConfig, {"distill": {"temperature": 8, "alpha": 0.5, "combine": "logits"}})
    assert cfg.distill.objective == "kd" and cfg.distill.args == {}
    assert cfg.distill.objective_knobs() == {"temperature": 8.0, "alpha": 0.5, "teacher_weights": None, "combine": "logits", "weighting": None}
    raw = apply_overrides({"distill": {"temperature": 4.0}}, ["distill.alpha=0.3", "distill.temperature=2"])
    assert parse(RunConfig, raw).distill.objective_knobs()["alpha"] == 0.3
    with pytest.raises(ConfigError, match=r"^config: distill.alpha: Input should be less than or equal to 1 \(got 1.5\)$"):
        parse(RunConfig, {"distill": {"alpha": 1.5}})
    with pytest.raises(ConfigError, match=r"distill.objective: unknown objective 'dkd'"):
        parse(RunConfig, {"distill": {"objective": "dkd"}})
    with pytest.raises(ConfigError, match=r"args.beta: objective 'kd' has no knob 'beta'"):
        parse(RunConfig, {"distill": {"args": {"beta": 8}}})
    with pytest.raises(ConfigError, match=r"args.temperature: set it as distill.temperature"):
        parse(RunConfig, {"distill": {"args": {"temperature": 8}}})


def test_distiller_from_knobs_or_an_objective_but_not_both():
    t = teacher_net(0)
    d = Distiller(nn.Linear(12, C), t, temperature=3.0, alpha=0.2)
    assert isinstance(d.objective, KD) and d.objective.temperature == 3.0
    with pytest.raises(ValueError, match="kd objective's knobs"):
        Distiller(nn.Linear(12, C), t, build_objective("kd", num_teachers=1), temperature=3.0)
    with pytest.raises(ValueError, match="built for 2 teachers"):
        Distiller(nn.Linear(12, C), t, build_objective("kd", num_teachers=2))
    with pytest.raises(ValueError, match="temperature and alpha"):
        Distiller(nn.Linear(12, C), t)


def test_build_distiller_passes_every_teacher_and_the_weights():
    cfg = DistillConfig(temperature=2.0, alpha=0.0, teacher_weights=[0.0, 1.0], combine="logits")
    t0, t1 = teacher_net(0), teacher_net(1)
    d = build_distiller(nn.Linear(12, C), [t0, t1], cfg)
    assert d.teachers == [t0, t1] and d.objective.fixed_weights.tolist() == [0.0, 1.0]
    x = torch.randn(6, 12)
    out = d.training_step(x, torch.full((6,), -1))
    with torch.no_grad():  # the weights [0, 1]: teacher 1 alone is the target
        want = kd_loss(out.logits.detach(), t1(x), None, temperature=2.0, alpha=0.0)
    assert out.losses["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    with pytest.raises(ValueError, match="2 values for 3 teachers"):
        build_distiller(nn.Linear(12, C), [t0, t1, teacher_net(2)], cfg)


# ---------------------------------------------------------------- an objective with its own parameters


class LearnedTemperature(Objective):
    """Test-only: KD at a learned temperature T = exp(log_t), reported per epoch."""

    def __init__(self, num_teachers: int, *, init_temperature: Annotated[float, Field(gt=0)] = 2.0,
                 alpha: Annotated[float, Field(ge=0, le=1)] = 0.0) -> None:
        super().__init__(num_teachers)
        self.log_t = nn.Parameter(torch.tensor(math.log(init_temperature)))
        self.alpha = alpha

    def forward(self, student_logits, teacher_logits, labels, progress=None):
        logits = self.check_teachers(teacher_logits)
        T = self.log_t.exp().to(student_logits.dtype)
        terms = kd_loss_terms(student_logits, logits, labels, temperature=T, alpha=self.alpha)
        return {"loss": terms.loss, "hard": terms.hard, "soft": terms.soft}

    def epoch_values(self):
        return {"temperature": float(self.log_t.detach().exp())}


def test_an_objective_with_a_learnable_parameter_trains_it_without_weight_decay(scratch_registry):
    register_objective("learned_t")(LearnedTemperature)
    cfg = parse(RunConfig, {"teachers": [{"model": {"name": "mlp"}}], "distill": {"objective": "learned_t", "alpha": 0.2,
                                                                                    "args": {"init_temperature": 3.0}}})
    with pytest.raises(ConfigError, match=r"temperature: objective 'learned_t' has no knob 'temperature'"):
        parse(RunConfig, {"distill": {"objective": "learned_t", "temperature": 8.0}})

    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, C))
    d = build_distiller(student, [teacher_net(1)], cfg.distill)
    objective = d.objective
    assert isinstance(objective, LearnedTemperature) and objective.alpha == 0.2
    assert float(objective.log_t.detach().exp()) == pytest.approx(3.0)

    train_cfg = TrainConfig(epochs=3, batch_size=16, lr=0.05, optimizer="adamw", weight_decay=0.5, device="cpu")
    opt = make_optimizer(d.param_groups(), train_cfg)
    (group,) = [g for g in opt.param_groups if any(p is objective.log_t for p in g["params"])]
    assert group["weight_decay"] == 0.0 and len(group["params"]) == 1
    assert [g["weight_decay"] for g in opt.param_groups if g is not group] == [0.5]  # the student keeps the config's

    before = objective.log_t.detach().clone()
    history = fit(d, toy_split(96, unlabeled=32), train_cfg, seed=0, val=toy_split(32, seed=1), progress=False)
    assert not torch.equal(objective.log_t.detach(), before)  # it learned
    temps = [e["objective_temperature"] for e in history.epochs]  # logged per epoch via the epoch metrics
    assert len(temps) == 3 and temps[-1] == pytest.approx(float(objective.log_t.detach().exp()))
    assert len(set(temps)) == 3

    d.to("meta")  # moves with .to(), like the student and the teachers (meta: observable without a GPU)
    assert objective.log_t.device.type == "meta" and next(student.parameters()).device.type == "meta"
    assert all(p.device.type == "meta" for t in d.teachers for p in t.parameters())


def test_the_contract_checks_hold_for_an_objective_with_parameters():
    """The suite's checks, run on the test-only learnable objective: gradients reach its parameter too."""

    def make(k):
        return LearnedTemperature(k, init_temperature=2.0, alpha=0.3)

    objective = make(2).double()
    check_finite_and_gradients_reach_only_the_student("learned_t", 2, objective)
    assert objective.log_t.grad is not None and objective.log_t.grad != 0
    check_teachers_bit_identical_and_optimizer_sees_student_and_objective("learned_t", make)
    check_deterministic("learned_t", 2, make)


# ---------------------------------------------------------------- training progress


def test_each_step_gets_the_training_progress():
    seen: list[Progress] = []

    class Recording(KD):
        def forward(self, student_logits, teacher_logits, labels, progress=None):
            seen.append(progress)
            return super().forward(student_logits, teacher_logits, labels, progress)

    d = Distiller(nn.Linear(12, C), teacher_net(0), Recording(1, temperature=2.0, alpha=0.5))
    fit(d, toy_split(50), TrainConfig(epochs=2, batch_size=20, device="cpu"), seed=0, progress=False)
    # 50 samples in batches of 20: 3 steps per epoch, 6 in all
    assert [(p.epoch, p.step) for p in seen] == [(1, 1), (1, 2), (1, 3), (2, 4), (2, 5), (2, 6)]
    assert {(p.epochs, p.steps_per_epoch, p.total_steps) for p in seen} == {(2, 3, 6)}
    assert seen[0].fraction == 0.0 and seen[-1].fraction == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="step"):
        Progress(epoch=1, epochs=1, step=4, steps_per_epoch=3)
