"""Golden values for research.evaluate: every expected number below is worked out by hand
(the arithmetic is in the comments), never by calling the code under test."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from research.evaluate import classification_metrics, count_flops, count_parameters, expected_calibration_error

# Four samples, three classes. The student's logits are log-probabilities, so its softmax is
# exactly these rows (up to float32 rounding):
#   sample  student p            label  pred  correct  confidence
#   1       [0.70, 0.20, 0.10]   0      0     yes      0.70
#   2       [0.10, 0.70, 0.20]   2      1     no       0.70
#   3       [0.05, 0.05, 0.90]   2      2     yes      0.90
#   4       [0.50, 0.30, 0.20]   1      0     no       0.50
P = torch.tensor([[0.70, 0.20, 0.10], [0.10, 0.70, 0.20], [0.05, 0.05, 0.90], [0.50, 0.30, 0.20]])
LABELS = torch.tensor([0, 2, 2, 1])
# The teacher's probabilities (argmax 0, 2, 2, 1: agrees with the student on samples 1 and 3).
Q = torch.tensor([[0.70, 0.20, 0.10], [0.10, 0.20, 0.70], [0.05, 0.05, 0.90], [0.20, 0.60, 0.20]])


def test_accuracy_errors_and_nll_by_hand():
    m = classification_metrics(P.log(), LABELS)
    assert m["accuracy"] == 0.5  # samples 1 and 3 of 4
    assert m["errors"] == 2.0
    # NLL = -(ln 0.7 + ln 0.2 + ln 0.9 + ln 0.3) / 4
    #     = (0.356675 + 1.609438 + 0.105361 + 1.203973) / 4 = 3.275447 / 4 = 0.818862
    assert m["nll"] == pytest.approx(0.818862, abs=1e-5)


def test_ece_by_hand():
    # 5 bins (0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1]:
    #   (.6, .8]: samples 1, 2: accuracy 1/2, mean confidence 0.7 -> 2/4 * |0.5 - 0.7| = 0.100
    #   (.8, 1]:  sample 3:     accuracy 1,   confidence 0.9     -> 1/4 * |1.0 - 0.9| = 0.025
    #   (.4, .6]: sample 4:     accuracy 0,   confidence 0.5     -> 1/4 * |0.0 - 0.5| = 0.125
    # ECE = 0.100 + 0.025 + 0.125 = 0.25
    assert expected_calibration_error(P, LABELS, bins=5) == pytest.approx(0.25, abs=1e-6)
    # 15 bins of width 1/15 put the same samples together (0.7 in (10/15, 11/15], 0.9 in
    # (13/15, 14/15], 0.5 in (7/15, 8/15]): the same 0.25.
    assert classification_metrics(P.log(), LABELS)["ece"] == pytest.approx(0.25, abs=1e-6)
    # One bin: |accuracy - mean confidence| = |0.5 - (0.7 + 0.7 + 0.9 + 0.5) / 4| = |0.5 - 0.7| = 0.2
    assert expected_calibration_error(P, LABELS, bins=1) == pytest.approx(0.2, abs=1e-6)
    # Perfectly calibrated: confidence 0.5 everywhere, right on half of the samples.
    half = torch.tensor([[0.5, 0.3, 0.2]] * 4)
    assert expected_calibration_error(half, torch.tensor([0, 0, 1, 2]), bins=10) == pytest.approx(0.0, abs=1e-6)


def test_agreement_and_kl_to_the_teacher_by_hand():
    m = classification_metrics(P.log(), LABELS, teacher_logits=Q.log())
    assert m["agreement"] == 0.5  # predictions 0, 1, 2, 0 against the teacher's 0, 2, 2, 1
    # KL(teacher || student) = sum_c q_c ln(q_c / p_c), averaged over the 4 samples (batchmean):
    #   1: q = p                                      -> 0
    #   2: 0.1 ln(1) + 0.2 ln(0.2/0.7) + 0.7 ln(0.7/0.2) = 0.5 ln 3.5           = 0.626381
    #   3: q = p                                      -> 0
    #   4: 0.2 ln(0.2/0.5) + 0.6 ln(0.6/0.3) + 0.2 ln 1 = -0.183258 + 0.415888 = 0.232630
    #   mean = (0.626381 + 0.232630) / 4 = 0.214753
    # (the reverse KL(student || teacher) would give (0.626381 + 0.250201) / 4 = 0.219146 and
    #  a mean over classes too 0.071584: both are caught at this tolerance)
    assert m["kl_to_teacher"] == pytest.approx(0.214753, abs=1e-5)
    # A teacher that is the student itself: full agreement, no divergence.
    same = classification_metrics(P.log(), LABELS, teacher_logits=P.log())
    assert same["agreement"] == 1.0 and same["kl_to_teacher"] == pytest.approx(0.0, abs=1e-6)


def test_metrics_do_not_depend_on_a_logit_shift():
    # Softmax is invariant to adding a constant per row: the metrics of logits log(p) + c are those of log(p).
    shifted = P.log() + torch.tensor([[3.0], [-7.0], [0.5], [12.0]])
    a, b = classification_metrics(P.log(), LABELS, teacher_logits=Q.log()), classification_metrics(shifted, LABELS, teacher_logits=Q.log())
    assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], abs=1e-5) for k in a)


# ---------------------------------------------------------------- FLOPs and parameters
# torch's FlopCounterMode counts a multiply-add as 2 FLOPs and does not count bias additions,
# activations or reshapes. count_flops runs one sample (batch 1).


def test_flops_of_a_linear_layer():
    # Linear(3, 2): 3 * 2 multiply-adds per sample = 2 * 3 * 2 = 12 FLOPs (bias not counted).
    assert count_flops(nn.Linear(3, 2), (3,)) == 12
    # Linear(40, 100) -> ReLU -> Linear(100, 10): 2 * (40 * 100 + 100 * 10) = 2 * 5,000 = 10,000
    assert count_flops(nn.Sequential(nn.Linear(40, 100), nn.ReLU(), nn.Linear(100, 10)), (40,)) == 10_000


def test_flops_of_a_small_convolution():
    # Conv1d(2 -> 4, kernel 3) on length 10, no padding: output length 10 - 3 + 1 = 8,
    # each output value is 2 * 3 = 6 multiply-adds: 4 * 8 * 6 * 2 = 384 FLOPs;
    # then Linear(4 * 8 = 32 -> 5): 2 * 32 * 5 = 320. Total 704.
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 5))
    assert count_flops(model, (2, 10)) == 704
    # Conv2d(1 -> 3, 3x3, padding 1, stride 2) on 6x6: output 3x3 (= floor((6 + 2 - 3) / 2) + 1),
    # 9 multiply-adds per output value: 3 * 3 * 3 * 9 * 2 = 486 FLOPs.
    assert count_flops(nn.Conv2d(1, 3, 3, padding=1, stride=2), (1, 6, 6)) == 486


def test_count_flops_leaves_the_model_in_training_mode():
    model = nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5)).train()
    assert count_flops(model, (3,)) == 12
    assert model.training


def test_parameter_counts_by_hand():
    # Linear(3, 2): 3 * 2 weights + 2 biases = 8; Conv1d(2, 4, 3): 4 * 2 * 3 + 4 = 28
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Flatten(), nn.Linear(32, 5))
    assert count_parameters(nn.Linear(3, 2)) == 8
    assert count_parameters(model) == 28 + 32 * 5 + 5 == 193
    with torch.no_grad():
        model[0].weight.zero_()  # 24 weights zeroed: 193 - 24 = 169 non-zero
    assert count_parameters(model, nonzero=True) == 169


def test_nll_is_natural_log():
    # Uniform logits over 3 classes: NLL = ln 3 = 1.098612 whatever the label.
    m = classification_metrics(torch.zeros(2, 3), torch.tensor([0, 2]))
    assert m["nll"] == pytest.approx(math.log(3), abs=1e-6) and m["nll"] == pytest.approx(1.098612, abs=1e-6)
