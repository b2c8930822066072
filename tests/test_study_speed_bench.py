"""The study-speed benchmark's own arithmetic (benchmarks/study_speed.py): the FLOPs it charges a
trial and the hand-written loop's distillation loss, against hand-computed values."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # the benchmark imports its siblings
import study_speed  # noqa: E402


def test_trial_flops_of_the_mnist1d_mlp_are_its_gemms():
    # 40-100-100-10 at batch 100: forward 2*100*(40*100 + 100*100 + 100*10) = 3.0 M; weight gradients the
    # same 3.0 M; input gradients of layers 2 and 3 only (x needs none) 2*100*(100*100 + 100*10) = 2.2 M.
    data = SimpleNamespace(input_shape=(40,), num_classes=10,
                           train=SimpleNamespace(x=torch.randn(100, 40), y=torch.cat([torch.arange(10).repeat(5), -torch.ones(50, dtype=torch.long)])))
    cfg = SimpleNamespace(student=SimpleNamespace(name="mnist1d_mlp", args={}), train=SimpleNamespace(batch_size=100))
    flops, layers = study_speed.trial_flops(cfg, data, steps=3)
    assert layers == [(40, 100), (100, 100), (100, 10)]
    assert flops == 3 * 8_200_000


def test_kd_loss_hand_computed():
    s = torch.zeros(1, 2)
    t = torch.tensor([[math.log(3.0), 0.0]])
    # T = 2: p_teacher = softmax([ln3 / 2, 0]) = [sqrt3, 1] / (sqrt3 + 1) = [0.6339746, 0.3660254], student uniform:
    # KL = 0.633975 ln(2 * 0.633975) + 0.366025 ln(2 * 0.366025) = 0.0363408; times T^2 = 0.1453631.
    unlabelled = study_speed.kd_loss(s, t, torch.tensor([-1]), temperature=2.0, alpha=0.5)
    assert abs(unlabelled.item() - 0.5 * 0.1453631) < 1e-5  # no labelled row: no hard term
    # A labelled row adds alpha * CE = 0.5 * ln 2 (uniform student).
    labelled = study_speed.kd_loss(s, t, torch.tensor([0]), temperature=2.0, alpha=0.5)
    assert abs(labelled.item() - (0.5 * math.log(2.0) + 0.5 * 0.1453631)) < 1e-5
