"""A population of K MLP students distilled in one pass (issue 11): stacked weights, batched matmuls.

K members share the data order, the teachers and the train config's shape (epochs, batch size,
optimizer kind, schedule); each has its own temperature T_k, alpha_k, teacher weights w_k, learning
rate lr_k and weight decay wd_k, held as [K] tensors. Member k's weights of layer l are row k of a
stacked tensor W_l [K, out, in] (bias b_l [K, out]); one step computes all K forwards with
``torch.baddbmm`` and back-propagates the SUM of the members' losses, whose gradient with respect to
member k's rows is exactly member k's own gradient (no parameter is shared).

Loss of member k (the workbench's convention, research.distill.loss):

    L_k = alpha_k * CE(y, s_k) + (1 - alpha_k) * T_k^2 * KL(p_teacher,k || softmax(s_k / T_k))

CE averaged over the labelled rows, KL summed over classes and averaged over the batch ("batchmean"),
written out as sum p (log p - log q) rather than ``F.kl_div`` (GUIDE.md section 6: the stacked
form must not depend on a per-sample kernel). The teacher target p_teacher,k is the lone path's
(``combine`` probs / logits / kl_sum with member k's weights on the simplex).

The optimizer (:class:`StackedOptimizer`) is K independent optimizers: torch's fused Adam, AdamW or
SGD kernel run on each member's row of one flat [K, P] parameter tensor (or, where this torch has
no such kernel, the same rules written elementwise with lr and weight decay broadcast per member);
nothing couples members (no global clipping). The schedule is torch's own scheduler run on a shadow
optimizer with one parameter group per member, so member k's lr each epoch is the lone run's.

Speed (issue 11): on a CPU these models are small enough that a step is as much per-operation
overhead as arithmetic, so the hot loop keeps operations few and layouts friendly: the teachers'
softened targets are computed once per run (each member's T and teacher weights are fixed), the
loss keeps classes before samples, and the optimizer is one fused call per member.

Initialisation is the caller's: it hands K built models (each as the lone run builds it, after
``seed_everything(seed)``), whose weights are copied into the stack. Every member then equals the
lone run of the same seed and hyperparameters up to floating-point reduction order (a batched
matmul sums in another order than ``addmm``; tests/test_population.py checks logits to 1e-5 after
2 epochs).

A member stops early when one of its epoch callbacks raises (a pruner's exception, say) or its
loss becomes non-finite (:class:`research.train.NonFiniteLossError`); its rows leave the stack (the
others' compute shrinks) and its result keeps the error and the epochs it ran. No MLflow, no Optuna.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .data import Split
from .distill.loss import normalize_teacher_weights
from .models.mlp import MLP
from .tasks import Task
from .train import History, NonFiniteLossError, make_scheduler, resolve_device, seed_everything

EpochCallback = Callable[[int, dict[str, float]], None]

# Precomputed teacher targets above this many floats (K x N_train x C; 2**26 = 256 MiB) are computed per batch instead.
MAX_TARGET_ELEMENTS = 1 << 26


def stack_problem(model: nn.Module) -> str | None:
    """Why ``model`` cannot be a member of a stack, or None when it can: only the workbench's plain
    MLP (Flatten, Linear, ReLU) stacks; dropout would need per-member randomness to equal the lone
    run, BatchNorm has running statistics, other layers have no stacked form here."""
    if not isinstance(model, MLP):
        return f"{type(model).__name__} is not a plain MLP"
    for layer in model.net:
        if isinstance(layer, nn.Dropout):
            return "it has dropout (no per-member randomness equal to the lone run)"
        if not isinstance(layer, (nn.Flatten, nn.Linear, nn.ReLU)):
            return f"it has a {type(layer).__name__} layer"
    return None


class StackedMLP:
    """K MLPs of one architecture as stacked tensors: weights [K, out, in], biases [K, out].

    All of them are views of one flat [K, P] tensor (``flat``, P = one member's parameter count),
    so that the optimizer updates every member and layer in a few elementwise operations on one
    tensor instead of ~10 per layer (on a CPU a step of these tiny models is otherwise dominated by
    per-operation overhead). The views are autograd leaves of their own; :meth:`flat_grad` gathers
    their gradients into one [K, P] tensor.
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
        self.template = models[0]
        self.linear_names = [f"net.{i}" for i, layer in enumerate(models[0].net) if isinstance(layer, nn.Linear)]
        self.ops = ["relu" if isinstance(layer, nn.ReLU) else "linear" if isinstance(layer, nn.Linear) else "flatten"
                    for layer in models[0].net]
        states = [m.state_dict() for m in models]
        # (state-dict key, shape) in flat order: weight then bias of each linear layer
        self.layout = [(f"{n}.{kind}", tuple(states[0][f"{n}.{kind}"].shape)) for n in self.linear_names for kind in ("weight", "bias")]
        self.flat = torch.stack([torch.cat([s[key].detach().reshape(-1) for key, _ in self.layout]) for s in states]).float()
        self._bind()

    def _bind(self) -> None:
        """(Re)make the per-layer leaves as views of ``flat`` (after it was replaced), their
        gradients views of ``grad`` [K, P]: backward accumulates into them in place (torch adds
        into a ``.grad`` already there), so the optimizer reads one tensor without gathering."""
        views, offset = [], 0
        k = self.flat.shape[0]
        self.grad = torch.zeros_like(self.flat)
        for _, shape in self.layout:
            size = math.prod(shape)
            leaf = self.flat[:, offset : offset + size].view(k, *shape).detach().requires_grad_(True)
            leaf.grad = self.grad[:, offset : offset + size].view(k, *shape)
            views.append(leaf)
            offset += size
        self.weights, self.biases = views[0::2], views[1::2]

    @property
    def size(self) -> int:
        return self.flat.shape[0]

    def parameters(self) -> list[torch.Tensor]:
        return [t for pair in zip(self.weights, self.biases) for t in pair]

    def flat_grad(self) -> torch.Tensor:
        """The members' gradients as one [K, P] tensor, in ``flat``'s order (zeros where a layer got none)."""
        return self.grad

    def zero_grad(self) -> None:
        self.grad.zero_()

    def to(self, device: torch.device | str) -> "StackedMLP":
        self.flat = self.flat.to(device)
        self._bind()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, *input_shape] shared by all members -> logits [K, B, C]."""
        h = x.flatten(1).unsqueeze(0).expand(self.size, -1, -1)  # [K, B, in], a view: no copy
        last = len(self.weights) - 1
        j = 0
        for op in self.ops:
            if op == "linear":
                if j == last and self.ops[-1] == "linear":  # W h^T + b: logits stored [K, C, B], the layout the loss is fastest in
                    return torch.baddbmm(self.biases[j].unsqueeze(2), self.weights[j], h.transpose(1, 2)).transpose(1, 2)
                # b + h @ W^T per member: the lone Linear's addmm, batched.
                h = torch.baddbmm(self.biases[j].unsqueeze(1), h, self.weights[j].transpose(1, 2))
                j += 1
            elif op == "relu":
                h = torch.relu(h)
        return h

    __call__ = forward

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the members at ``rows`` (indices into the current stack)."""
        self.flat = self.flat[rows].clone()
        self._bind()

    def state_dict(self, row: int) -> dict[str, torch.Tensor]:
        """Member ``row``'s weights as the lone MLP's state dict (CPU copies)."""
        out: dict[str, torch.Tensor] = {}
        for (key, _), t in zip(self.layout, self.parameters()):
            out[key] = t.detach()[row].cpu().clone()
        return out


class StackedOptimizer:
    """K independent optimizers over a flat [K, P] parameter tensor (member = row), torch's update rules.

    ``kind``: ``sgd`` (momentum, nesterov, no dampening), ``adam`` (L2 weight decay added to the
    gradient) or ``adamw`` (decoupled: p *= 1 - lr * wd), betas (0.9, 0.999), eps 1e-8, as torch's
    defaults (torch.optim.Adam / AdamW / SGD documentation). Each :meth:`step` gets the flat gradient
    [K, P] and each member's lr and weight decay.

    ``fused`` (default: when this torch has them): torch's own fused kernels (``torch._fused_adam_``,
    ``_fused_adamw_``, ``_fused_sgd_``, which ``torch.optim``'s ``fused=True`` calls), once per
    member on its row, so each member is updated by exactly torch's optimizer in one pass over its
    parameters; they are private, so the elementwise form below stays as the fallback (measured
    here: the fused calls were 1.5-2.7x faster than the elementwise form at K = 16).
    """

    def __init__(self, kind: str, *, momentum: float = 0.0, nesterov: bool = False,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, fused: bool | None = None) -> None:
        if kind not in ("sgd", "adam", "adamw"):
            raise ValueError(f"unknown optimizer {kind!r}")
        self.kind, self.momentum, self.nesterov, self.betas, self.eps = kind, momentum, nesterov, betas, eps
        kernel = getattr(torch, {"sgd": "_fused_sgd_", "adam": "_fused_adam_", "adamw": "_fused_adamw_"}[kind], None)
        self.kernel = kernel if fused is not False else None
        if fused and kernel is None:
            raise ValueError(f"this torch ({torch.__version__}) has no fused {kind} kernel")
        self.state: dict[str, torch.Tensor] = {}
        self.steps = 0

    @torch.no_grad()
    def step(self, p: torch.Tensor, g: torch.Tensor, lr: Sequence[float], weight_decay: Sequence[float]) -> None:
        """Update ``p`` [K, P] in place from its gradient ``g`` [K, P] (which it may change);
        ``lr`` and ``weight_decay``: one float per member."""
        self.steps += 1
        if self.kernel is not None:
            self._fused_step(p, g, lr, weight_decay)
            return
        st = self.state
        lr_k = torch.tensor(list(lr), dtype=p.dtype, device=p.device).reshape(-1, 1)
        wd_k = torch.tensor(list(weight_decay), dtype=p.dtype, device=p.device).reshape(-1, 1)
        if self.kind == "sgd":
            g = g.addcmul_(wd_k, p)
            if self.momentum != 0:
                if "buf" not in st:
                    st["buf"] = g.clone()
                else:
                    st["buf"].mul_(self.momentum).add_(g)
                g = g.add_(st["buf"], alpha=self.momentum) if self.nesterov else st["buf"]
            p.sub_(lr_k * g)
            return
        if self.kind == "adamw":
            p.mul_(1 - lr_k * wd_k)
        else:
            g = g.addcmul_(wd_k, p)
        b1, b2 = self.betas
        if "m" not in st:
            st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
        st["m"].lerp_(g, 1 - b1)
        st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
        bc1, bc2 = 1 - b1**self.steps, 1 - b2**self.steps
        denom = st["v"].sqrt().div_(math.sqrt(bc2)).add_(self.eps)
        p.sub_(st["m"].div(denom).mul_(lr_k / bc1))

    def _fused_step(self, p: torch.Tensor, g: torch.Tensor, lr: Sequence[float], weight_decay: Sequence[float]) -> None:
        st = self.state
        if self.kind == "sgd":
            first = "buf" not in st
            if first and self.momentum != 0:
                st["buf"] = torch.empty_like(p)  # the kernel fills it with the first gradient
            for k, (lr_k, wd_k) in enumerate(zip(lr, weight_decay)):
                self.kernel([p[k]], [g[k]], [st["buf"][k]] if self.momentum != 0 else [], weight_decay=float(wd_k),
                            momentum=self.momentum, lr=float(lr_k), dampening=0.0, nesterov=self.nesterov, maximize=False,
                            is_first_step=first)
            return
        if "m" not in st:
            st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
        # the step count already advanced, on the parameters' device: as torch.optim hands it to the kernels
        step = torch.tensor(float(self.steps), device=p.device)
        b1, b2 = self.betas
        for k, (p_k, g_k, m_k, v_k) in enumerate(self._rows(p, g)):
            self.kernel(p_k, g_k, m_k, v_k, [], [step], lr=float(lr[k]), beta1=b1, beta2=b2,
                        weight_decay=float(weight_decay[k]), eps=self.eps, amsgrad=False, maximize=False)

    def _rows(self, p: torch.Tensor, g: torch.Tensor) -> list[tuple[list[torch.Tensor], ...]]:
        """Each member's row of ``p``, ``g`` and the moments, as the kernels' one-tensor lists;
        made once per (p, g) pair, since making K x 4 views every step cost as much as the update."""
        m, v = self.state["m"], self.state["v"]
        made_for = getattr(self, "_rows_for", ())
        if len(made_for) != 3 or not all(a is b for a, b in zip(made_for, (p, g, m))):
            self._rows_for = (p, g, m)  # references, not ids: a freed tensor's id can come back
            self._rows_cache = [([p[k]], [g[k]], [m[k]], [v[k]]) for k in range(p.shape[0])]
        return self._rows_cache

    def keep(self, rows: torch.Tensor) -> None:
        """Follow :meth:`StackedMLP.keep`: the states' rows at ``rows`` kept."""
        self.state = {k: v[rows].clone() for k, v in self.state.items()}


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
    cached = torch.stack([t.to(device) for t in teacher_logits])  # [N, N_train, C]
    # Each member's teacher target is fixed for the whole run (its T and teacher weights do not change):
    # computed once here, unless it would be too large (then per batch, the same function).
    per_batch = k * cached.shape[1] * cached.shape[2] > MAX_TARGET_ELEMENTS
    x_all, y_all = train.x.to(device), train.y.to(device)
    temperature = torch.tensor([float(m.temperature) for m in members], device=device)
    alpha = torch.tensor([float(m.alpha) for m in members], device=device)
    # The lone run's schedule, member by member: torch's scheduler on a shadow optimizer of K groups.
    shadow = torch.optim.SGD([{"params": [torch.zeros(0, requires_grad=True)], "lr": float(m.lr)} for m in members], lr=1.0)
    scheduler = make_scheduler(shadow, cfg)
    optimizer = StackedOptimizer(cfg.optimizer, momentum=cfg.momentum, nesterov=cfg.nesterov)
    gen = torch.Generator().manual_seed(seed)
    n = len(train)
    active = list(range(k))  # original index of each stack row
    histories = [History() for _ in members]
    errors: list[BaseException | None] = [None] * k
    final: dict[int, dict[str, torch.Tensor]] = {}
    sums = torch.zeros(3, k, dtype=torch.float64)  # per original member: summed loss, hard, soft (x batch size)
    acc = torch.zeros(3, k, device=device)  # the same over the active rows, since the last flush

    def flush() -> None:
        nonlocal acc
        sums[:, active] += acc.double().cpu()
        acc = torch.zeros(3, len(active), device=device)

    def targets(rows: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor]:
        return teacher_targets(cached[:, rows], temperature, weights.to(device) if n_teachers > 1 else None, combine)

    target, target_c = (None, None) if per_batch else targets(slice(None))
    if target is not None:  # sample-major ([N, K, C], [N, K]): a batch's gather copies whole rows
        target, target_c = target.permute(2, 0, 1).contiguous(), target_c.t().contiguous()

    def drop(rows_out: list[int]) -> None:
        nonlocal active, temperature, alpha, weights, lr_list, wd_list, acc, target, target_c
        flush()
        for r in rows_out:
            final[active[r]] = stack.state_dict(r)
        keep = [r for r in range(len(active)) if r not in rows_out]
        idx = torch.tensor(keep, dtype=torch.long, device=device)
        if keep:
            stack.keep(idx)
            optimizer.keep(idx)
        temperature, alpha, weights = temperature[idx], alpha[idx], weights[idx.cpu()]
        lr_list, wd_list = [lr_list[r] for r in keep], [wd_list[r] for r in keep]
        if target is not None:
            target, target_c = target[:, idx], target_c[:, idx]
        active = [active[r] for r in keep]
        acc = torch.zeros(3, len(active), device=device)

    with warnings.catch_warnings():
        # the gradients are views of one [K, P] buffer (StackedMLP._bind), which torch's layout check flags
        warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")
        for epoch in range(1, cfg.epochs + 1):
            if not active:
                break
            t0 = time.perf_counter()
            lr_all = torch.tensor([g["lr"] for g in shadow.param_groups], device=device)
            lr_list = [float(lr_all[m]) for m in active]  # each member's lr this epoch (its schedule's)
            wd_list = [float(members[m].weight_decay) for m in active]
            sums.zero_()
            order = torch.randperm(n, generator=gen).to(device)
            for i in range(0, n, cfg.batch_size):
                idx = order[i : i + cfg.batch_size]
                x, y = x_all[idx], y_all[idx]
                logits = stack(x)
                p_b, c_b = targets(idx) if target is None else (target[idx].permute(1, 2, 0), target_c[idx].t())
                loss, hard, soft = kd_loss_from_targets(logits, p_b, c_b, y, temperature=temperature, alpha=alpha)
                stack.zero_grad()
                loss.sum().backward()  # d(sum)/d(member k's rows) = member k's own gradient
                optimizer.step(stack.flat, stack.flat_grad(), lr_list, wd_list)
                acc += torch.stack([loss.detach(), hard, soft]) * len(idx)
                bad = [r for r, v in enumerate(loss.detach().tolist()) if not math.isfinite(v)]
                if bad:
                    for r in bad:
                        errors[active[r]] = NonFiniteLossError(
                            f"training loss became {loss[r].item()} at epoch {epoch}, step {i // cfg.batch_size + 1}")
                    drop(bad)
                    if not active:
                        break
            if active:
                flush()
            if not active:
                break
            elapsed = time.perf_counter() - t0
            shared_k = len(active)
            if scheduler is not None:
                shadow.step()  # a no-op (no gradients): keeps torch's order check of step() before scheduler.step() quiet
                scheduler.step()
            stopped: list[int] = []
            for r, m_idx in enumerate(active):
                member = members[m_idx]
                metrics = {f"train_{name}": float(sums[j, m_idx]) / n for j, name in enumerate(("loss", "hard", "soft"))}
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


@torch.no_grad()
def stacked_logits(models: Sequence[nn.Module], x: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
    """Logits float32 [K, N, C] of K stackable MLPs (:func:`stack_problem`) on every row of ``x``
    [N, *input_shape], in batches of ``batch_size`` rows, returned on the CPU: what
    ``research.evaluate.predict`` gives for each model alone, in one stacked pass. The batches run
    where the first model's weights are. Equal to each lone model's logits up to the matmul's
    reduction order (``baddbmm`` against ``addmm``; tests check the metrics to 1e-6).
    Raises ValueError when the models do not stack."""
    stack = StackedMLP(models)  # copies of the weights: the models themselves are untouched
    where = stack.weights[0].device
    out = [stack(x[i : i + batch_size].to(where)).float().cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out, dim=1) if out else torch.empty(len(models), 0)
