"""A population of K MLP students distilled in one pass (issue 11): stacked weights, batched matmuls.

K members share the data order, the teachers and the train config's shape (epochs, batch size,
optimizer kind, schedule); each has its own temperature T_k, alpha_k, teacher weights w_k, learning
rate lr_k and weight decay wd_k. Member k's linear layer l is row k of a block [K, out, in + 1]
(weight, then bias as the last column; :class:`StackedMLP`); one step computes all K forwards as
batched matmuls, the gradient of each member's loss with respect to its logits in closed form
(:func:`kd_logit_grad`) and the backward by hand, each member's rows getting exactly its own
gradient (no parameter is shared).

Loss of member k (the workbench's convention, research.distill.loss):

    L_k = alpha_k * CE(y, s_k) + (1 - alpha_k) * T_k^2 * KL(p_teacher,k || softmax(s_k / T_k))

CE averaged over the labelled rows, KL summed over classes and averaged over the batch ("batchmean"),
written out as sum p (log p - log q) rather than ``F.kl_div`` (GUIDE.md section 6: the stacked
form must not depend on a per-sample kernel). The teacher target p_teacher,k is the lone path's
(``combine`` probs / logits / kl_sum with member k's weights on the simplex).
:func:`kd_loss_from_targets` computes these values with autograd; the training loop uses its
closed-form gradient, tested against it.

The optimizer (:class:`research.stacked_optim.StackedOptimizer`) is K independent optimizers:
torch's fused Adam, AdamW or SGD kernel, one call per group of members sharing (lr, weight decay)
(or, where this torch has no such kernel, the same rules written elementwise with lr and weight
decay broadcast per member); nothing couples members (no global clipping). The schedule is torch's
own scheduler run on a shadow optimizer with one parameter group per member, so member k's lr each
epoch is the lone run's.

Speed (issue 11): on a CPU these models are small enough that a step is as much per-operation
overhead as arithmetic, so the hot loop keeps operations few, buffers preallocated and layouts
friendly: no autograd (a step is 3 forward and 5 backward matmuls, the bias folded into them by a
row of ones under the activations; ReLU's backward is autograd's own kernel), the teachers'
softened targets are computed once per run (each member's T and teacher weights are fixed), the
loss keeps classes before samples, and the loss values are summed on the device and read once an
epoch (so nothing waits on the device inside an epoch).

Initialisation is the caller's: it hands K built models (each as the lone run builds it, after
``seed_everything(seed)``), whose weights are copied into the stack. Every member then equals the
lone run of the same seed and hyperparameters up to floating-point reduction order (a batched
matmul sums in another order than ``addmm``; tests/test_population.py checks logits to 1e-5 after
2 epochs).

A member stops early when one of its epoch callbacks raises (a pruner's exception, say) or its
loss is non-finite at the end of an epoch (:class:`research.train.NonFiniteLossError`; a lone run
stops at the step); its rows leave the stack (the others' compute shrinks) and its result keeps
the error and the epochs it ran. No MLflow, no Optuna.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .data import Split
from .distill.loss import normalize_teacher_weights
from .models.mlp import MLP
from .stacked_optim import StackedOptimizer
from .tasks import Task
from .train import History, NonFiniteLossError, make_scheduler, resolve_device, seed_everything

EpochCallback = Callable[[int, dict[str, float]], None]

# ReLU's backward as autograd runs it (grad where the output > 0, else 0), in place; a mask-and-multiply was 8x slower here.
_threshold_backward = torch.ops.aten.threshold_backward.grad_input

# Precomputed teacher targets above this many floats (K x N_train x C; 2**26 = 256 MiB) are computed per batch instead.
MAX_TARGET_ELEMENTS = 1 << 26
# Steps between moving the float32 loss-value accumulators into float64 (each element sums this many terms in float32).
ACC_FLUSH_STEPS = 16


def stack_problem(model: nn.Module) -> str | None:
    """Why ``model`` cannot be a member of a stack, or None when it can: only the workbench's plain
    MLP (Flatten, then Linear + ReLU pairs, then a Linear) stacks; dropout would need per-member
    randomness to equal the lone run, BatchNorm has running statistics, other layers have no stacked
    form here."""
    if not isinstance(model, MLP):
        return f"{type(model).__name__} is not a plain MLP"
    kinds = []
    for layer in model.net:
        if isinstance(layer, nn.Dropout):
            return "it has dropout (no per-member randomness equal to the lone run)"
        if not isinstance(layer, (nn.Flatten, nn.Linear, nn.ReLU)):
            return f"it has a {type(layer).__name__} layer"
        kinds.append("L" if isinstance(layer, nn.Linear) else "R" if isinstance(layer, nn.ReLU) else "")
    pattern = "".join(kinds)
    if pattern.replace("LR", "") != "L" or not pattern.endswith("L"):
        return "its layers are not Linear + ReLU pairs ending in a Linear"
    return None


class StackedMLP:
    """K MLPs of one architecture, stacked, trained by hand-written forward and backward passes.

    Linear layer l of member k is held as one augmented matrix ``blocks[l][k]`` [out, in + 1]: the
    weight, then the bias as its last column. The activations are kept feature-major, [K, features + 1,
    B], with a last row of ones, so a layer is ONE batched matmul (no separate bias add) and its weight
    and bias gradients come from one matmul too. On a CPU these models are so small that a step is as
    much per-operation overhead as arithmetic: written out (instead of autograd over ``baddbmm``) the
    step is 3 forward matmuls, 5 backward ones, 2 ReLUs and 2 ReLU backwards, in preallocated buffers.
    The blocks are views of one flat parameter tensor ``flat`` (``grads``: of ``grad``), each block
    [K, out, in + 1] contiguous, so the optimizer updates a whole layer, or all members at once, per call.
    """

    def __init__(self, models: Sequence[nn.Module]) -> None:
        if not models:
            raise ValueError("a stack needs at least one model")
        for m in models:
            problem = stack_problem(m)
            if problem:
                raise ValueError(f"cannot stack this model: {problem}")
        shapes = {tuple((n, tuple(p.shape)) for n, p in m.named_parameters()) for m in models}
        if len(shapes) > 1:
            raise ValueError("the models to stack differ in architecture")
        self.linear_names = [f"net.{i}" for i, layer in enumerate(models[0].net) if isinstance(layer, nn.Linear)]
        states = [m.state_dict() for m in models]
        self.shapes = [tuple(states[0][f"{n}.weight"].shape) for n in self.linear_names]  # (out, in) per layer
        blocks = [torch.stack([torch.cat([s[f"{n}.weight"], s[f"{n}.bias"].unsqueeze(1)], 1) for s in states]).float()
                  for n in self.linear_names]
        self.flat = torch.cat([b.reshape(-1) for b in blocks])
        self._bind(len(models))

    def _bind(self, k: int) -> None:
        """(Re)make the blocks as views of ``flat`` (after it was replaced) and the gradient buffer."""
        self.k = k
        self.grad = torch.zeros_like(self.flat)
        self.blocks, self.grads, offset = [], [], 0
        for out, inp in self.shapes:
            size = k * out * (inp + 1)
            self.blocks.append(self.flat[offset : offset + size].view(k, out, inp + 1))
            self.grads.append(self.grad[offset : offset + size].view(k, out, inp + 1))
            offset += size
        self._weights_t = [a[:, :, :-1].transpose(1, 2) for a in self.blocks]  # [K, in, out] views, for the input gradients
        self._buffers: dict[int, dict[str, list[torch.Tensor]]] = {}
        self._saved: tuple[torch.Tensor, dict[str, list[torch.Tensor]]] | None = None

    @property
    def size(self) -> int:
        return self.k

    @property
    def in_features(self) -> int:
        return self.shapes[0][1]

    @property
    def num_classes(self) -> int:
        return self.shapes[-1][0]

    def to(self, device: torch.device | str) -> "StackedMLP":
        self.flat = self.flat.to(device)
        self._bind(self.k)
        return self

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, *input_shape] shared by all members -> logits [K, B, C] (inference)."""
        h = x.flatten(1).t().to(self.flat).expand(self.k, -1, -1)  # [K, in, B], a view
        for i, a in enumerate(self.blocks):
            h = torch.baddbmm(a[:, :, -1:], a[:, :, :-1], h)
            if i < len(self.blocks) - 1:
                h = h.relu_()
        return h.transpose(1, 2)

    __call__ = forward

    def _workspace(self, b: int) -> dict[str, list[torch.Tensor]]:
        """The buffers of a step at batch size ``b``, made once (fresh allocations every step made the
        matmuls writing into them up to 3x slower here), with their views, since a step of these
        small models is cheap enough that making the same views every step shows:
        ``hidden`` [K, out + 1, b] per hidden layer, last row ones; ``out``: its rows the matmul
        writes; ``hidden_t``: its transpose; ``relu_out``: the rows ReLU's backward reads; ``g_in``
        [K, in, b]: the input gradients of the layers after the first."""
        if b not in self._buffers:
            hidden = [torch.ones(self.k, out + 1, b, device=self.flat.device) for out, _ in self.shapes[:-1]]
            self._buffers[b] = {"hidden": hidden, "out": [h[:, :-1] for h in hidden], "hidden_t": [h.transpose(1, 2) for h in hidden],
                                "g_in": [torch.empty(self.k, inp, b, device=self.flat.device) for _, inp in self.shapes[1:]]}
        return self._buffers[b]

    def train_forward(self, xa: torch.Tensor) -> torch.Tensor:
        """Training forward: ``xa`` [B, in + 1], the batch flattened with a column of ones appended,
        -> logits [K, C, B] (classes before samples). Keeps the activations for :meth:`backward`."""
        ws = self._workspace(xa.shape[0])
        h = xa.t().expand(self.k, -1, -1)  # [K, in + 1, B]: the members share the batch
        for a, out, buf in zip(self.blocks, ws["out"], ws["hidden"]):
            torch.bmm(a, h, out=out)
            out.relu_()
            h = buf
        self._saved = (xa, ws)
        return torch.bmm(self.blocks[-1], h)

    def backward(self, g: torch.Tensor) -> None:
        """Write into ``grads`` the gradient of sum_k L_k given ``g`` = dL_k/dlogits [K, C, B] (it may
        be changed) for the batch of the last :meth:`train_forward`. No member's loss depends on
        another's rows, so each block row is that member's own gradient."""
        if self._saved is None:
            raise RuntimeError("backward before train_forward")
        xa, ws = self._saved
        for i in range(len(self.blocks) - 1, 0, -1):
            torch.bmm(g, ws["hidden_t"][i - 1], out=self.grads[i])  # weight and bias (the ones row) gradients
            g_in = torch.bmm(self._weights_t[i], g, out=ws["g_in"][i - 1])
            g = _threshold_backward(g_in, ws["out"][i - 1], 0.0, grad_input=g_in)  # ReLU's: autograd's own kernel
        torch.bmm(g, xa.expand(self.k, -1, -1), out=self.grads[0])
        self._saved = None

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the members at ``rows`` (indices into the current stack)."""
        kept = [b[rows].reshape(-1) for b in self.blocks]
        self.flat = torch.cat(kept)
        self._bind(len(rows))

    def state_dict(self, row: int) -> dict[str, torch.Tensor]:
        """Member ``row``'s weights as the lone MLP's state dict (CPU copies)."""
        out: dict[str, torch.Tensor] = {}
        for name, a in zip(self.linear_names, self.blocks):
            m = a[row].detach().cpu()
            out[f"{name}.weight"], out[f"{name}.bias"] = m[:, :-1].clone(), m[:, -1].clone()
        return out


def teacher_targets(teachers: torch.Tensor, temperature: torch.Tensor, teacher_weights: torch.Tensor | None = None,
                    combine: str = "probs") -> tuple[torch.Tensor, torch.Tensor]:
    """Each member's softened teacher target, for the KL term written as ``c - sum_c P log q``.

    teachers [N, M, C] (N teachers' logits over M samples); temperature [K]; teacher_weights [K, N]
    on the simplex (None: uniform). Returns ``P`` [K, C, M] (classes before samples: see
    :func:`stacked_kd_loss`) and ``c`` [K, M] such that member k's KL on sample m is
    ``c[k, m] - sum_c P[k, c, m] * log_q[k, c, m]``:

    - ``probs``: P = sum_n w_n softmax(t_n / T), c = sum_c P log P;
    - ``logits``: P = softmax(sum_n w_n t_n / T), c = sum_c P log P;
    - ``kl_sum``: sum_n w_n KL(p_n || q), so P = sum_n w_n p_n and c = sum_n w_n sum_c p_n log p_n.

    Raises ValueError for another ``combine``.
    """
    n, _, _ = teachers.shape
    k = temperature.shape[0]
    t = temperature.to(teachers).reshape(k, 1, 1, 1)
    w = (teacher_weights if teacher_weights is not None else torch.full((k, n), 1.0 / n)).to(teachers).reshape(k, n, 1, 1)
    logits = teachers.transpose(1, 2).unsqueeze(0)  # [1, N, C, M]
    if combine == "logits" and n > 1:
        log_p = F.log_softmax((w * logits).sum(1) / t.squeeze(1), dim=1)  # [K, C, M]
        return log_p.exp(), (log_p.exp() * log_p).sum(1)
    log_each = F.log_softmax(logits / t, dim=2)  # [K, N, C, M]
    if n == 1 or combine == "probs":
        log_p = torch.logsumexp(log_each + torch.log(w), dim=1) if n > 1 else log_each[:, 0]
        return log_p.exp(), (log_p.exp() * log_p).sum(1)
    if combine == "kl_sum":
        p_each = log_each.exp()
        return (w * p_each).sum(1), (w.squeeze(-1) * (p_each * log_each).sum(2)).sum(1)
    raise ValueError(f"unknown combine {combine!r}")


def kd_loss_from_targets(student: torch.Tensor, target: torch.Tensor, target_c: torch.Tensor, labels: torch.Tensor | None, *,
                         temperature: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each member's loss, hard and soft term ([K] each) against precomputed teacher targets.

    student [K, B, C] logits (fastest when ``student.transpose(1, 2)`` is contiguous, as
    :class:`StackedMLP` returns them); target [K, C, B] and target_c [K, B] from
    :func:`teacher_targets` over the batch's samples; labels [B] (< 0: unlabeled) or None.
    The class dimension is kept before the batch dimension throughout: torch's CPU log-softmax over a
    short last dimension (10 classes) was 3-15x slower here than over a leading one.
    """
    k = student.shape[0]
    s = student.transpose(1, 2)  # [K, C, B]
    t = temperature.to(s).reshape(k, 1, 1)
    log_q = F.log_softmax(s / t, dim=1)
    soft = (target_c - (target * log_q).sum(1)).mean(1)  # KL(P || q), batchmean
    if labels is None:
        hard = s.new_zeros(k)
    else:
        # the mean over the labelled rows, without selecting them (no data-dependent shapes, no sync):
        # unlabeled rows (< 0) are ignored (loss 0) and the sum is divided by the labelled count
        labelled = labels >= 0
        y = labels.masked_fill(~labelled, -100).expand(k, -1)
        ce = F.cross_entropy(s, y, reduction="none", ignore_index=-100)  # [K, B]
        hard = ce.sum(1) / labelled.sum().clamp(min=1)
    a = alpha.to(s)
    loss = a * hard + (1 - a) * temperature.to(s) ** 2 * soft
    return loss, hard.detach(), soft.detach()


def stacked_kd_loss(student: torch.Tensor, teachers: torch.Tensor, labels: torch.Tensor | None, *,
                    temperature: torch.Tensor, alpha: torch.Tensor, teacher_weights: torch.Tensor | None = None,
                    combine: str = "probs") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each member's loss, hard term and soft term, each [K].

    student [K, B, C]; teachers [N, B, C] (N teachers, shared); labels [B] (< 0: unlabeled) or None;
    temperature, alpha [K]; teacher_weights [K, N] on the simplex (None: one teacher, or uniform).
    ``soft`` is the mean KL without T^2, as ``KDTerms.soft``. Hinton et al. (2015), with the
    workbench's multi-teacher ``combine`` (:func:`teacher_targets`).
    """
    target, target_c = teacher_targets(teachers.detach(), temperature, teacher_weights, combine)
    return kd_loss_from_targets(student, target, target_c, labels, temperature=temperature, alpha=alpha)


def kd_logit_grad(logits: torch.Tensor, target: torch.Tensor, onehot: torch.Tensor, labelled: torch.Tensor, *,
                  inv_temperature: torch.Tensor, soft_scale: torch.Tensor, hard_scale: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradient of each member's loss with respect to its logits, in closed form.

    logits [K, C, B] (classes before samples, as :meth:`StackedMLP.train_forward` gives them);
    target [K, C, B]: the teacher target P of :func:`teacher_targets` over the batch; onehot [C, B]:
    the labels one-hot, all-zero columns for unlabeled rows; labelled [B]: 1.0 for a labelled row,
    else 0.0. Per member, each [K, 1, 1]: inv_temperature = 1 / T_k, soft_scale = (1 - alpha_k) T_k / B,
    hard_scale = alpha_k / (labelled rows, at least 1). For the loss of :func:`kd_loss_from_targets`,

        dL_k / dz = hard_scale_k * (softmax(z) * labelled - onehot) + soft_scale_k * (softmax(z / T_k) - P)

    (cross-entropy's gradient is softmax - onehot; the soft term's is (1/T)(q - p) per unit of KL,
    Hinton et al. 2015, section 2, times the T^2 weight). Returns (grad [K, C, B], log q =
    log_softmax(z / T) and log s = log_softmax(z), each [K, C, B], from which the caller sums the
    loss values without computing them again). tests/test_population.py checks it against autograd.
    """
    log_q = torch.log_softmax(logits * inv_temperature, 1)
    grad = torch.sub(log_q.exp(), target).mul_(soft_scale)
    log_s = torch.log_softmax(logits, 1)
    grad.addcmul_(log_s.exp().mul_(labelled).sub_(onehot), hard_scale)
    return grad, log_q, log_s


@dataclass
class Member:
    """One member of a population: its built model (initial weights as the lone run's) and knobs.

    ``teacher_weights``: one weight per teacher (None: uniform); ``epoch_values``: constant per-epoch
    scalars the lone learner would log (its objective's ``objective_*``); ``callbacks``: called with
    (epoch, metrics) after each epoch, as ``research.train.fit``'s; one that raises stops this member.
    """

    model: nn.Module
    temperature: float
    alpha: float
    lr: float
    weight_decay: float = 0.0
    teacher_weights: Sequence[float] | None = None
    epoch_values: dict[str, float] = field(default_factory=dict)
    callbacks: list[EpochCallback] = field(default_factory=list)


@dataclass
class MemberResult:
    """What a member's training gave: ``model`` with its final weights (those of its last epoch when
    stopped early), its ``history`` (per-epoch metrics as ``fit`` logs them; ``wall_time_s`` is its
    share of the stack's time: the stack's wall time while it trained, divided by the members trained
    along), and ``error``: the exception that stopped it (a callback's, or NonFiniteLossError), None
    when it ran all epochs."""

    model: nn.Module
    history: History
    error: BaseException | None = None


def fit_population(
    members: Sequence[Member],
    train: Split,
    cfg: TrainConfig,
    *,
    seed: int,
    teacher_logits: Sequence[torch.Tensor],
    task: Task,
    val: Split | None = None,
    combine: str = "probs",
) -> list[MemberResult]:
    """Distil K stacked MLP students with their own knobs; the data order is ``fit``'s for ``seed``.

    ``teacher_logits``: one [N_train, C] tensor per teacher, aligned with ``train``'s rows (the cached
    logits the lone Distiller looks up by sample index). ``cfg``: the shared train config (its
    ``lr`` and ``weight_decay`` are replaced by each member's). Validation per member each epoch by
    ``task.epoch_metrics`` on the member's unstacked model, as ``fit`` does. Raises ValueError when a
    model does not stack (:func:`stack_problem`) or the knobs do not fit the teachers.
    """
    if not members:
        raise ValueError("a population needs at least one member")
    seed_everything(seed, cfg.deterministic)  # as fit: the same global state before the first batch
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    k = len(members)
    n_teachers = len(teacher_logits)
    if n_teachers < 1:
        raise ValueError("a population is distilled from at least one teacher")
    weights = torch.stack([normalize_teacher_weights(m.teacher_weights, n_teachers) for m in members]).float()  # [K, N]
    stack = StackedMLP([m.model for m in members]).to(device)
    classes = stack.num_classes
    cached = torch.stack([t.to(device) for t in teacher_logits])  # [N, N_train, C]
    if cached.shape[-1] != classes:
        raise ValueError(f"the teachers' logits have {cached.shape[-1]} classes, the students {classes}")
    n, bs = len(train), cfg.batch_size
    x_all, y_all = train.x.to(device).flatten(1), train.y.to(device)
    temperature = torch.tensor([float(m.temperature) for m in members], device=device)
    alpha = torch.tensor([float(m.alpha) for m in members], device=device)
    # The lone run's schedule, member by member: torch's scheduler on a shadow optimizer of K groups.
    shadow = torch.optim.SGD([{"params": [torch.zeros(0, requires_grad=True)], "lr": float(m.lr)} for m in members], lr=1.0)
    scheduler = make_scheduler(shadow, cfg)
    optimizer = StackedOptimizer(cfg.optimizer, momentum=cfg.momentum, nesterov=cfg.nesterov)
    gen = torch.Generator().manual_seed(seed)
    active = list(range(k))  # original index of each stack row
    histories = [History() for _ in members]
    errors: list[BaseException | None] = [None] * k
    final: dict[int, dict[str, torch.Tensor]] = {}

    def targets(rows: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        return teacher_targets(cached[:, rows], temperature, weights.to(device) if n_teachers > 1 else None, combine)

    # Each member's teacher target is fixed for the whole run (its T and teacher weights do not change):
    # computed once here ([K, C, N], and the constant part of the KL summed over all samples), unless it
    # would be too large (then per batch, the same function).
    per_batch = k * n * classes > MAX_TARGET_ELEMENTS
    target, target_c = (None, None) if per_batch else targets(slice(None))
    x_epoch = torch.ones(n, x_all.shape[1] + 1, device=device)  # each epoch's rows in its order, a ones column appended

    def drop(rows_out: list[int]) -> None:
        nonlocal active, temperature, alpha, weights, target, target_c
        for r in rows_out:
            final[active[r]] = stack.state_dict(r)
        keep = [r for r in range(len(active)) if r not in rows_out]
        idx = torch.tensor(keep, dtype=torch.long, device=device)
        if keep:
            stack.keep(idx)
            optimizer.keep(idx)
        temperature, alpha, weights = temperature[idx], alpha[idx], weights[idx.cpu()]
        if target is not None:
            target, target_c = target[idx], target_c[idx]
        active = [active[r] for r in keep]

    for epoch in range(1, cfg.epochs + 1):
        if not active:
            break
        t0 = time.perf_counter()
        lr_all = torch.tensor([g["lr"] for g in shadow.param_groups])
        lr_list = [float(lr_all[m]) for m in active]  # each member's lr this epoch (its schedule's)
        wd_list = [float(members[m].weight_decay) for m in active]
        kk = len(active)
        order = torch.randperm(n, generator=gen).to(device)  # fit's order for this seed
        x_epoch[:, :-1] = x_all[order]
        batches = _epoch_labels(y_all[order], bs, classes)
        # gathered as [K*C, N] along its last dim: 3x faster than index_select(2) of [K, C, N] here
        p_epoch = target.reshape(-1, n).index_select(1, order).view(target.shape) if target is not None else None
        t_col = temperature.reshape(kk, 1, 1)
        inv_t, a_col = 1 / t_col, alpha.reshape(kk, 1, 1)
        soft_scale = {b: (1 - a_col) * t_col / b for b in {bs, n % bs or bs}}  # per batch size: the full one and the last
        hard_scale = (batches.hard_scale.unsqueeze(1) * alpha).reshape(-1, kk, 1, 1)  # [batches, K, 1, 1]: alpha_k / labelled rows
        # The loss values summed over the epoch elementwise, [2, K, C, B]: the sum of P log q, and of
        # (batch size / labelled rows) onehot log s. In float32 for a few steps, then into float64 (the
        # KL is a small difference of large sums; float64 every step cost 3 % of a step here).
        acc, acc64 = torch.zeros(2, kk, classes, bs, device=device), torch.zeros(2, kk, classes, bs, dtype=torch.float64, device=device)
        const_soft = target_c.sum(1, dtype=torch.float64) if target_c is not None else torch.zeros(kk, dtype=torch.float64, device=device)
        onehot, labelled, onehot_value = batches.onehot, batches.labelled, batches.onehot_value
        acc_soft, acc_hard = acc[0], acc[1]
        forward, backward, update, blocks, grads = stack.train_forward, stack.backward, optimizer.step, stack.blocks, stack.grads
        for j, i in enumerate(range(0, n, bs)):  # locals only: at ~2 ms a step, attribute lookups show
            b = min(bs, n - i)
            if p_epoch is not None:
                p_b = p_epoch[:, :, i : i + b]
            else:
                p_b, c_b = targets(order[i : i + b])
                const_soft += c_b.sum(1, dtype=torch.float64)
            grad, log_q, log_s = kd_logit_grad(forward(x_epoch[i : i + b]), p_b, onehot[:, i : i + b], labelled[i : i + b],
                                               inv_temperature=inv_t, soft_scale=soft_scale[b], hard_scale=hard_scale[j])
            backward(grad)
            update(blocks, grads, lr_list, wd_list)
            if b == bs:
                acc_soft.addcmul_(p_b, log_q)
                acc_hard.addcmul_(onehot_value[:, i : i + b], log_s)
            else:
                acc_soft[..., :b].addcmul_(p_b, log_q)
                acc_hard[..., :b].addcmul_(onehot_value[:, i : i + b], log_s)
            if j % ACC_FLUSH_STEPS == ACC_FLUSH_STEPS - 1:
                acc64 += acc
                acc.zero_()
        sums = (acc64 + acc).sum((2, 3))  # [2, K]
        soft = ((const_soft - sums[0]) / n).cpu()  # each member's mean KL (batchmean, weighted by batch size)
        hard = (-sums[1] / n).cpu()
        t64, a64 = temperature.double().cpu(), alpha.double().cpu()
        loss = a64 * hard + (1 - a64) * t64**2 * soft
        elapsed = time.perf_counter() - t0
        # Divergence is checked once an epoch (a per-step check would wait on the device every step); a
        # member's NaN does not reach the others (no shared parameter, no coupling in the optimizer).
        bad = [r for r, v in enumerate(loss.tolist()) if not math.isfinite(v)]
        for r in bad:
            errors[active[r]] = NonFiniteLossError(f"training loss became {loss[r].item()} in epoch {epoch}")
        if bad:
            keep_rows = [r for r in range(kk) if r not in bad]
            loss, hard, soft = loss[keep_rows], hard[keep_rows], soft[keep_rows]
            drop(bad)
        if not active:
            break
        shared_k = len(active)
        if scheduler is not None:
            shadow.step()  # a no-op (no gradients): keeps torch's order check of step() before scheduler.step() quiet
            scheduler.step()
        stopped: list[int] = []
        for r, m_idx in enumerate(active):
            member = members[m_idx]
            metrics = {"train_loss": float(loss[r]), "train_hard": float(hard[r]), "train_soft": float(soft[r])}
            metrics["lr"] = float(lr_all[m_idx])
            metrics["epoch_time_s"] = elapsed / shared_k
            metrics.update(member.epoch_values)
            if val is not None and len(val):
                member.model.load_state_dict(stack.state_dict(r))
                member.model.eval()
                vm = task.epoch_metrics(member.model, val.x, val.y, device=device)
                metrics.update({f"val_{name}": v for name, v in vm.items()})
            histories[m_idx].epochs.append(metrics)
            histories[m_idx].wall_time_s += elapsed / shared_k
            try:
                for cb in member.callbacks:
                    cb(epoch, metrics)
            except Exception as e:  # noqa: BLE001 - a callback's exception stops its member only, as fit's stops its run
                errors[m_idx] = e
                stopped.append(r)
        if stopped:
            drop(stopped)
    for r, m_idx in enumerate(active):
        final[m_idx] = stack.state_dict(r)
    results = []
    for m_idx, member in enumerate(members):
        member.model.load_state_dict(final[m_idx])
        member.model.eval()
        results.append(MemberResult(member.model, histories[m_idx], errors[m_idx]))
    return results


@dataclass
class _EpochLabels:
    """An epoch's labels in its order, as the closed-form gradient wants them: ``onehot`` [C, N] (zero
    columns for unlabeled rows), ``labelled`` [N] (1.0 / 0.0), ``hard_scale`` [batches]: 1 / labelled
    rows of each batch (at least 1), and ``onehot_value`` [C, N]: onehot times batch size / labelled
    rows of the row's batch, so that summing onehot_value * log s over an epoch gives minus the sum
    over batches of (batch size x the batch's mean cross-entropy), as ``fit`` sums its hard term."""

    onehot: torch.Tensor
    labelled: torch.Tensor
    hard_scale: torch.Tensor
    onehot_value: torch.Tensor


def _epoch_labels(y: torch.Tensor, batch_size: int, classes: int) -> _EpochLabels:
    n = len(y)
    labelled = (y >= 0).float()
    onehot = F.one_hot(y.clamp(min=0), classes).t().float() * labelled
    n_batches = -(-n // batch_size)
    padded = F.pad(labelled, (0, n_batches * batch_size - n))
    per_batch = padded.view(n_batches, batch_size).sum(1).clamp(min=1)  # no atomics: deterministic on any device
    sizes = torch.full((n_batches,), float(batch_size), device=y.device)
    sizes[-1] = n - (n_batches - 1) * batch_size
    weight = (sizes / per_batch).repeat_interleave(batch_size)[:n]
    return _EpochLabels(onehot, labelled, 1 / per_batch, onehot * weight)


@torch.no_grad()
def stacked_logits(models: Sequence[nn.Module], x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """Logits float32 [K, N, C] of K stackable MLPs (:func:`stack_problem`) on every row of ``x``
    [N, *input_shape], in batches of ``batch_size`` rows, returned on the CPU: what
    ``research.evaluate.predict`` gives for each model alone, in one stacked pass. The batches run
    where the first model's weights are. Equal to each lone model's logits up to the matmul's
    reduction order (``baddbmm`` against ``addmm``; tests check the metrics to 1e-6).
    Raises ValueError when the models do not stack."""
    stack = StackedMLP(models)  # copies of the weights: the models themselves are untouched
    where = stack.flat.device
    out = [stack(x[i : i + batch_size].to(where)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out, dim=1) if out else torch.empty(len(models), 0)
