"""The distiller keeps its teachers frozen; the cache is exact and never stale."""

import pytest
import torch
from torch import nn

from research.config import TrainConfig
from research.data import Split
from research.distill import Distiller, TeacherLogitCache, model_fingerprint
from research.train import fit


class DropoutBNTeacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))

    def forward(self, x):
        return self.net(x)


def toy_split(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    return Split(x, y)


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_teacher_bitwise_unchanged_after_distillation_and_stays_in_eval():
    torch.manual_seed(0)
    teacher = DropoutBNTeacher()
    teacher.train()
    # give BN non-trivial running statistics, as a trained teacher has
    with torch.no_grad():
        for _ in range(3):
            teacher(torch.randn(32, 12) * 2 + 1)
    before = snapshot(teacher)
    student = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    distiller = Distiller(student, teacher, temperature=4.0, alpha=0.5)
    distiller.train(True)  # putting the student in train mode must not wake the teacher
    assert student.training and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    fit(distiller, toy_split(), TrainConfig(epochs=3, batch_size=16, lr=1e-2), seed=0, progress=False)
    after = snapshot(teacher)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert not teacher.training


def test_optimizer_sees_only_student_parameters_and_teacher_builds_no_graph():
    teacher = DropoutBNTeacher()
    student = nn.Linear(12, 3)
    d = Distiller(student, [teacher, DropoutBNTeacher()], temperature=2.0, alpha=0.1)
    assert {id(p) for p in d.parameters()} == {id(p) for p in student.parameters()}
    logits = d.teacher_logits(torch.randn(4, 12))
    assert all(t.grad_fn is None and not t.requires_grad for t in logits)
    out = d.training_step(torch.randn(4, 12), torch.tensor([0, 1, -1, 2]))
    out.losses["loss"].backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.weight.grad is not None


def test_cached_and_live_teacher_logits_give_the_same_step():
    torch.manual_seed(1)
    teacher, student = DropoutBNTeacher().eval(), nn.Linear(12, 3)
    split = toy_split(32)
    cache = TeacherLogitCache()
    cached = cache.logits(teacher, split.x, split.fingerprint())
    live = Distiller(student, teacher, temperature=3.0, alpha=0.2)
    fast = Distiller(student, teacher, temperature=3.0, alpha=0.2, cached_logits=[cached])
    idx = torch.tensor([3, 7, 11, 30])
    a = live.training_step(split.x[idx], split.y[idx]).losses["loss"]
    b = fast.training_step(split.x[idx], split.y[idx], idx).losses["loss"]
    torch.testing.assert_close(a, b)


def test_cache_returns_identical_logits_and_is_not_reused_for_a_changed_teacher(tmp_path):
    torch.manual_seed(2)
    teacher = DropoutBNTeacher().eval()
    split = toy_split(40)
    fp = split.fingerprint()
    first = TeacherLogitCache(tmp_path).logits(teacher, split.x, fp)
    second_cache = TeacherLogitCache(tmp_path)  # a fresh process reads the file
    second = second_cache.logits(teacher, split.x, fp)
    assert second_cache.hits == 1 and second_cache.misses == 0
    assert torch.equal(first, second)
    assert len(list(tmp_path.glob("*.pt"))) == 1

    key_before = model_fingerprint(teacher)
    with torch.no_grad():
        teacher.net[0].weight[0, 0] += 1e-3  # a tiny change of one weight
    assert model_fingerprint(teacher) != key_before
    changed_cache = TeacherLogitCache(tmp_path)
    changed = changed_cache.logits(teacher, split.x, fp)
    assert changed_cache.misses == 1 and changed_cache.hits == 0
    assert not torch.equal(changed, first)
    with torch.no_grad():
        expected = teacher(split.x)
    torch.testing.assert_close(changed, expected)

    # a change of a BatchNorm buffer (not a parameter) also invalidates
    key_changed = changed_cache.key(teacher, fp)
    with torch.no_grad():
        teacher.net[1].running_mean += 0.5
    assert TeacherLogitCache(tmp_path).key(teacher, fp) != key_changed


def test_cache_is_keyed_by_data():
    teacher = DropoutBNTeacher().eval()
    a, b = toy_split(20, seed=0), toy_split(20, seed=1)
    cache = TeacherLogitCache()
    la = cache.logits(teacher, a.x, a.fingerprint())
    lb = cache.logits(teacher, b.x, b.fingerprint())
    assert cache.misses == 2 and not torch.equal(la, lb)


def test_same_seed_gives_identical_training():
    def run(seed):
        torch.manual_seed(123)  # the model init is the caller's; fit seeds the rest
        teacher = DropoutBNTeacher().eval()
        student = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
        h = fit(Distiller(student, teacher, temperature=2.0, alpha=0.5), toy_split(), TrainConfig(epochs=2, batch_size=8),
                seed=seed, val=toy_split(32, seed=9), progress=False)
        return [{k: v for k, v in e.items() if k != "epoch_time_s"} for e in h.epochs], snapshot(student)

    (m1, w1), (m2, w2), (m3, _) = run(0), run(0), run(1)
    assert m1 == m2
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert m1 != m3


# ---------------------------------------------------------------- one Distiller per config, also when fine-tuning


def _toy_bundle():
    from research.data import DataBundle

    tr, va, te = toy_split(200, seed=0), toy_split(60, seed=1), toy_split(60, seed=2)
    return DataBundle(name="toy", train=tr, val=va, test=te, transfer=None, num_classes=3, input_shape=(12,), augment=None)


def _expected_kd(student_logits, teacher_logits, labels, *, T, alpha, weights):
    """Written out from the convention (combine: logits): no call into research.distill."""
    s = student_logits.detach().double()
    mixed = sum(w * t.double() for w, t in zip(weights, teacher_logits))
    p = torch.softmax(mixed / T, 1)
    log_q = torch.log_softmax(s / T, 1)
    soft = (p * (torch.log(p) - log_q)).sum(1).mean()
    lab = labels >= 0
    hard = -torch.log_softmax(s[lab], 1)[torch.arange(int(lab.sum())), labels[lab]].mean()
    return float(soft), float(alpha * hard + (1 - alpha) * T**2 * soft)


def test_distil_then_prune_finetunes_from_all_teachers_with_the_run_distill_config(workdir, monkeypatch):
    """Fails before build_distiller: compress_run passed teachers[0] only and finetune built a
    Distiller without the teacher weights, the combine mode and the logit cache."""
    from research.config import RunConfig
    from research.distill import Distiller
    from research.pipeline import RunContext, Teacher, compress_run
    from research.tracking import Tracker

    T, alpha, weights = 3.0, 0.3, [0.25, 0.75]
    torch.manual_seed(0)
    teachers = [nn.Linear(12, 3), nn.Linear(12, 3)]
    with torch.no_grad():  # confident, different teachers: a wrong target is plain to see
        for t in teachers:
            t.weight.mul_(4.0)
    cfg = RunConfig.model_validate({
        "teachers": [{"model": {"name": "mlp"}}, {"model": {"name": "mlp"}}],
        "student": {"name": "mlp", "args": {"widths": [16]}},
        "train": {"epochs": 1, "batch_size": 50, "device": "cpu", "threads": 1},
        "distill": {"temperature": T, "alpha": alpha, "teacher_weights": weights, "combine": "logits"},
        "compress": {"method": "prune", "sparsity": 0.5, "finetune_epochs": 1},
        "compress_source": "distilled",
        "eval": {"latency_repeats": 1},
        "tracking": {"experiment": "ft", "log_model": False},
    })
    seen = []
    original = Distiller.training_step

    def spy(self, x, y, idx=None, *rest):
        out = original(self, x, y, idx, *rest)
        seen.append((id(self.model), x, y, out))
        return out

    monkeypatch.setattr(Distiller, "training_step", spy)
    compress_run(cfg, _toy_bundle(), RunContext(Tracker(), progress=False), seed=0, teachers=[Teacher(t.eval(), None) for t in teachers])

    students = list(dict.fromkeys(s for s, *_ in seen))
    assert len(students) == 2  # the distilled base, then its pruned copy being fine-tuned
    for student, x, y, out in seen:
        with torch.no_grad():
            t_logits = [t(x) for t in teachers]
        soft, loss = _expected_kd(out.logits, t_logits, y, T=T, alpha=alpha, weights=weights)
        stage = "fine-tuning" if student == students[1] else "distillation"
        assert out.losses["soft"].item() == pytest.approx(soft, rel=1e-4), stage
        assert out.losses["loss"].item() == pytest.approx(loss, rel=1e-4), stage
