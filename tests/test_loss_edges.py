"""Edges of the loss and the Distiller that the golden-value tests leave open: default and
unnormalised teacher weights, a batch of one with several teachers, a list of K teachers
(a stacked tensor refused), the label 0, the error messages, and what a Distiller's training step
really uses (its teachers' weights, the labels, the cached logits of the batch's indices).

Expected values come from torch primitives written out here (softmax, cross_entropy, a
KL sum), not from research.distill (written to kill the mutants of scripts/mutation.sh).
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from research.distill import Distiller, SupervisedTask, kd_loss, kd_loss_terms
from research.distill.loss import KDTerms, masked_cross_entropy, normalize_teacher_weights, teacher_log_probs


def kl(p, s, T):
    """sum_c p (log p - log softmax(s/T)), averaged over the batch."""
    log_q = torch.log(torch.softmax(s / T, dim=1))
    return (p * (torch.log(p) - log_q)).sum(1).mean()


def logits(seed, b=6, c=4):
    return torch.randn(b, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


# ---------------------------------------------------------------- loss


def test_uniform_weights_by_default_are_float64_on_the_simplex():
    w = normalize_teacher_weights(None, 4)
    assert w.dtype == torch.float64 and w.tolist() == [0.25, 0.25, 0.25, 0.25]


def test_weights_are_normalised_by_their_sum():
    assert normalize_teacher_weights([2.0, 6.0], 2).tolist() == [0.25, 0.75]


@pytest.mark.parametrize("combine", ["probs", "logits"])
def test_two_teachers_without_weights_count_equally(combine):
    t1, t2, T = logits(1), logits(2), 3.0
    if combine == "probs":
        want = torch.log((torch.softmax(t1 / T, 1) + torch.softmax(t2 / T, 1)) / 2)
    else:
        want = torch.log(torch.softmax((t1 + t2) / 2 / T, 1))
    torch.testing.assert_close(teacher_log_probs([t1, t2], T, combine=combine), want)


def test_unnormalised_weights_give_the_normalised_mixture():
    t1, t2, T = logits(1), logits(2), 2.0
    want = torch.log(0.25 * torch.softmax(t1 / T, 1) + 0.75 * torch.softmax(t2 / T, 1))
    torch.testing.assert_close(teacher_log_probs([t1, t2], T, [2.0, 6.0]), want)  # combine="probs" by default


def test_a_batch_of_one_with_two_teachers_still_mixes_them():
    t1, t2, T = logits(1, b=1), logits(2, b=1), 2.0
    want = torch.log(0.5 * torch.softmax(t1 / T, 1) + 0.5 * torch.softmax(t2 / T, 1))
    torch.testing.assert_close(teacher_log_probs([t1, t2], T), want)


def test_a_list_of_k_teachers_is_mixed_and_a_stacked_tensor_is_refused():
    t1, t2, T = logits(1), logits(2), 2.0
    torch.testing.assert_close(teacher_log_probs([t1, t2], T, [1.0, 3.0]),
                               torch.log(0.25 * torch.softmax(t1 / T, 1) + 0.75 * torch.softmax(t2 / T, 1)))
    # A 3-D tensor could be [K, B, C] teachers or one sequence teacher's [B, L, V]: never guessed.
    with pytest.raises(ValueError, match="list of K tensors"):
        teacher_log_probs(torch.stack([t1, t2]), T, [1.0, 3.0])


def test_float32_teachers_give_float32_targets():
    t = [logits(1).float(), logits(2).float()]
    assert teacher_log_probs(t, 2.0, [0.3, 0.7]).dtype == torch.float32
    assert teacher_log_probs(t, 2.0, [0.3, 0.7], combine="logits").dtype == torch.float32


def test_label_zero_is_a_label():
    s = logits(3)
    y = torch.zeros(6, dtype=torch.long)
    want = -torch.log(torch.softmax(s, 1)[:, 0]).mean()
    torch.testing.assert_close(masked_cross_entropy(s, y), want)
    mixed = torch.tensor([0, -1, 0, 2, -1, 0])
    keep = mixed >= 0
    torch.testing.assert_close(masked_cross_entropy(s, mixed), F.cross_entropy(s[keep], mixed[keep]))


def test_terms_as_floats():
    terms = KDTerms(loss=torch.tensor(1.5), hard=torch.tensor(0.25), soft=torch.tensor(0.125))
    got = terms.as_floats()
    assert got == {"loss": 1.5, "hard": 0.25, "soft": 0.125}
    assert all(type(v) is float for v in got.values())


@pytest.mark.parametrize(
    "teachers, match",
    [
        ([], r"^at least one teacher's logits are needed$"),
        (torch.zeros(1, 2, 6, 4, dtype=torch.float64), r"must be one teacher.s \[B, C\], got \(1, 2, 6, 4\)"),
        (torch.zeros(6, 5, dtype=torch.float64), r"teacher logits \(6, 5\) do not match student logits \(6, 4\)"),
    ],
)
def test_bad_teacher_logits_say_what_is_wrong(teachers, match):
    with pytest.raises(ValueError, match=match):
        kd_loss(logits(0), teachers, None, temperature=2.0, alpha=0.5)


@pytest.mark.parametrize(
    "weights, match",
    [([0.0, 0.0], r"^teacher_weights must not all be zero$"), ([1.0], r"^teacher_weights has 1 values for 2 teachers$"),
     ([1.0, -1.0], r"^teacher_weights must be finite and non-negative, got \[1.0, -1.0\]$")],
)
def test_bad_weights_say_what_is_wrong(weights, match):
    with pytest.raises(ValueError, match=match):
        normalize_teacher_weights(weights, 2)


# ---------------------------------------------------------------- Distiller


class Fixed(nn.Module):
    """A 'network' that returns given logits for inputs 0..N-1 (x holds the row index)."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(table.clone())

    def forward(self, x):
        return self.table[x[:, 0].long()]


def batch(n=6):
    return torch.arange(n, dtype=torch.float64).unsqueeze(1), torch.tensor([0, 3, 1, 0, 2, 3])[:n]


def test_a_step_weighs_its_teachers_and_uses_the_labels():
    x, y = batch()
    s, t1, t2, T, alpha = logits(0), logits(1), logits(2), 3.0, 0.3
    d = Distiller(Fixed(s), [Fixed(t1), Fixed(t2)], temperature=T, alpha=alpha, teacher_weights=[1.0, 3.0])
    out = d.training_step(x, y)
    p = 0.25 * torch.softmax(t1 / T, 1) + 0.75 * torch.softmax(t2 / T, 1)
    hard = F.cross_entropy(s, y)
    torch.testing.assert_close(out.logits, s)
    torch.testing.assert_close(out.losses["hard"], hard)
    torch.testing.assert_close(out.losses["soft"], kl(p, s, T))
    torch.testing.assert_close(out.losses["loss"], alpha * hard + (1 - alpha) * T**2 * kl(p, s, T))
    assert set(out.losses) == {"loss", "hard", "soft"}


@pytest.mark.parametrize("combine", ["probs", "logits"])
def test_a_step_uses_the_combine_mode(combine):
    x, y = batch()
    s, t1, t2, T = logits(0), logits(1), logits(2), 2.0
    out = Distiller(Fixed(s), [Fixed(t1), Fixed(t2)], temperature=T, alpha=0.0, combine=combine).training_step(x, y)
    p = (torch.softmax(t1 / T, 1) + torch.softmax(t2 / T, 1)) / 2 if combine == "probs" else torch.softmax((t1 + t2) / 2 / T, 1)
    torch.testing.assert_close(out.losses["soft"], kl(p, s, T))


def test_a_step_with_indices_uses_the_cached_logits_of_those_samples():
    x, y = batch(3)
    s, live, T = logits(0, b=3), logits(1, b=3), 2.0
    cached = logits(5, b=10)  # deliberately not what the live teacher says
    idx = torch.tensor([7, 2, 9])
    d = Distiller(Fixed(s), Fixed(live), temperature=T, alpha=0.0, cached_logits=[cached])
    torch.testing.assert_close(d.training_step(x, y, idx).losses["soft"], kl(torch.softmax(cached[idx] / T, 1), s, T))
    torch.testing.assert_close(d.training_step(x, y).losses["soft"], kl(torch.softmax(live / T, 1), s, T))  # no indices: live


def test_to_moves_student_teachers_and_cache():
    d = Distiller(nn.Linear(3, 2), nn.Linear(3, 2), temperature=2.0, alpha=0.5, cached_logits=[torch.zeros(4, 2)])
    assert d.to("meta") is d
    assert next(d.model.parameters()).device.type == "meta"
    assert next(d.teachers[0].parameters()).device.type == "meta"
    assert d.cached_logits[0].device.type == "meta"


def test_train_defaults_to_training_mode_and_keeps_teachers_in_eval():
    student, teacher = nn.Linear(3, 2), nn.Linear(3, 2)
    d = Distiller(student, teacher, temperature=2.0, alpha=0.5)
    d.train(False)
    assert not student.training
    assert d.train() is d and student.training and not teacher.training


@pytest.mark.parametrize(
    "kwargs, match",
    [({"teachers": []}, r"^a Distiller needs at least one teacher$"),
     ({"teachers": [nn.Linear(3, 2), nn.Linear(3, 2)], "cached_logits": [torch.zeros(4, 2)]}, r"^1 cached logit tensors for 2 teachers$")],
)
def test_bad_distiller_arguments_say_what_is_wrong(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Distiller(nn.Linear(3, 2), temperature=2.0, alpha=0.5, **kwargs)


def test_kd_loss_terms_detach_the_terms_but_not_the_loss():
    s = logits(0).requires_grad_()
    terms = kd_loss_terms(s, logits(1), torch.tensor([0, 1, 2, 3, 0, 1]), temperature=2.0, alpha=0.5)
    assert terms.loss.requires_grad and not terms.hard.requires_grad and not terms.soft.requires_grad
    assert math.isfinite(float(terms.loss.detach()))


# ---------------------------------------------------------------- SupervisedTask


def test_supervised_step_is_cross_entropy_over_the_labelled_samples():
    x, _ = batch()
    s = logits(0)
    y = torch.tensor([0, -1, 1, 3, -1, 2])
    out = SupervisedTask(Fixed(s)).training_step(x, y)
    keep = y >= 0
    want = -torch.log(torch.softmax(s[keep], 1)[torch.arange(4), y[keep]]).mean()
    torch.testing.assert_close(out.logits, s)
    torch.testing.assert_close(out.losses["loss"], want)
    torch.testing.assert_close(out.losses["hard"], want)
    assert out.losses["loss"].requires_grad and not out.losses["hard"].requires_grad
    assert set(out.losses) == {"loss", "hard"}


def test_a_supervised_batch_of_class_zero_only_is_labelled():
    x, _ = batch()
    s = logits(0)
    out = SupervisedTask(Fixed(s)).training_step(x, torch.zeros(6, dtype=torch.long))
    torch.testing.assert_close(out.losses["loss"], -torch.log(torch.softmax(s, 1)[:, 0]).mean())


def test_supervised_step_refuses_a_batch_without_labels():
    x, _ = batch()
    with pytest.raises(ValueError, match=r"^a supervised batch holds no labelled sample \(labels < 0 mark unlabeled data\)$"):
        SupervisedTask(Fixed(logits(0))).training_step(x, torch.full((6,), -1))


def test_supervised_task_mode_and_device():
    model = nn.Linear(3, 2)
    task = SupervisedTask(model)
    assert task.model is model and list(task.parameters()) == list(model.parameters())
    assert task.train(False) is task and not model.training
    assert task.train() is task and model.training
    assert task.to("meta") is task and model.weight.device.type == "meta"
