"""Golden-value tests of kd_loss against an independent NumPy formula."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from research.distill import kd_loss, kd_loss_terms


def np_softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def reference(s, ts, y, T, alpha, w=None, combine="probs"):
    """Written from the formula in the issue, in float64 NumPy, no torch."""
    s = s.astype(np.float64)
    ts = [t.astype(np.float64) for t in ts]
    K = len(ts)
    w = np.full(K, 1.0 / K) if w is None else np.asarray(w, np.float64) / np.sum(w)
    if combine == "probs":
        p = sum(wk * np_softmax(t / T) for wk, t in zip(w, ts))
    else:
        p = np_softmax(sum(wk * t for wk, t in zip(w, ts)) / T)
    q = np_softmax(s / T)
    kl = (p * (np.log(p) - np.log(q))).sum(1).mean()
    lab = y >= 0
    if lab.any():
        ps = np_softmax(s[lab])
        ce = -np.log(ps[np.arange(lab.sum()), y[lab]]).mean()
    else:
        ce = 0.0
    return alpha * ce + (1 - alpha) * T**2 * kl


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 20.0])
@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.5, 1.0])
@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("combine", ["probs", "logits"])
def test_matches_independent_formula(T, alpha, K, combine):
    g = torch.Generator().manual_seed(int(T * 100 + alpha * 10 + K))
    B, C = 16, 10
    s = torch.randn(B, C, generator=g, dtype=torch.float64) * 3
    ts = [torch.randn(B, C, generator=g, dtype=torch.float64) * 3 for _ in range(K)]
    y = torch.randint(0, C, (B,), generator=g)
    w = [0.2, 0.5, 0.3] if K == 3 else None
    got = kd_loss(s, ts if K > 1 else ts[0], y, temperature=T, alpha=alpha, teacher_weights=w, combine=combine)
    want = reference(s.numpy(), [t.numpy() for t in ts], y.numpy(), T, alpha, w, combine)
    assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_alpha_one_is_plain_cross_entropy():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    y = torch.randint(0, 5, (8,), generator=g)
    assert kd_loss(s, t, y, temperature=7.0, alpha=1.0).item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)


def test_soft_term_gradient_is_T_times_q_minus_p_over_B():
    g = torch.Generator().manual_seed(1)
    B, C, T = 6, 7, 3.0
    s = torch.randn(B, C, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(B, C, generator=g, dtype=torch.float64)
    kd_loss(s, t, torch.full((B,), -1), temperature=T, alpha=0.0).backward()
    q, p = torch.softmax(s.detach() / T, 1), torch.softmax(t / T, 1)
    torch.testing.assert_close(s.grad, T * (q - p) / B)


def test_continuous_in_alpha_at_both_ends():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    y = torch.randint(0, 5, (8,), generator=g)
    for a in (0.0, 1.0):
        near = a + (1e-6 if a == 0 else -1e-6)
        at = kd_loss(s, t, y, temperature=10.0, alpha=a).item()
        assert kd_loss(s, t, y, temperature=10.0, alpha=near).item() == pytest.approx(at, rel=1e-3)


def test_unlabeled_samples_add_only_the_soft_term():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randn(10, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (10,), generator=g)
    y[5:] = -1
    terms = kd_loss_terms(s, t, y, temperature=2.0, alpha=0.3)
    # hard term: mean over the 5 labelled samples only
    assert terms.hard.item() == pytest.approx(F.cross_entropy(s[:5], y[:5]).item(), rel=1e-12)
    # soft term: mean over all 10
    assert terms.loss.item() == pytest.approx(reference(s.numpy(), [t.numpy()], y.numpy(), 2.0, 0.3), rel=1e-12)


def test_batch_without_labels_has_no_hard_term():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    terms = kd_loss_terms(s, t, torch.full((4,), -1), temperature=2.0, alpha=0.5)
    assert terms.hard.item() == 0.0
    assert terms.loss.item() == pytest.approx(0.5 * 4 * terms.soft.item(), rel=1e-6)


def test_identical_teacher_and_student_have_zero_soft_term():
    s = torch.randn(5, 6)
    assert kd_loss_terms(s, s.clone(), None, temperature=4.0, alpha=0.0).loss.item() == pytest.approx(0.0, abs=1e-6)


def test_zero_weight_teacher_is_ignored():
    g = torch.Generator().manual_seed(5)
    s, t1, t2 = (torch.randn(6, 4, generator=g) for _ in range(3))
    y = torch.randint(0, 4, (6,), generator=g)
    a = kd_loss(s, [t1, t2], y, temperature=3.0, alpha=0.2, teacher_weights=[1.0, 0.0])
    b = kd_loss(s, t1, y, temperature=3.0, alpha=0.2)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": 0.0, "alpha": 0.5}, "temperature"),
        ({"temperature": -1.0, "alpha": 0.5}, "temperature"),
        ({"temperature": 2.0, "alpha": 1.5}, "alpha"),
        ({"temperature": 2.0, "alpha": 0.5, "teacher_weights": [1.0, -1.0]}, "non-negative"),
        ({"temperature": 2.0, "alpha": 0.5, "teacher_weights": [0.0, 0.0]}, "zero"),
        ({"temperature": 2.0, "alpha": 0.5, "teacher_weights": [1.0]}, "2 teachers"),
        ({"temperature": 2.0, "alpha": 0.5, "combine": "mean"}, "combine"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match=match):
        kd_loss(s, [t, t], torch.zeros(3, dtype=torch.long), **kwargs)
