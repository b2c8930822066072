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

The optimizer (:class:`StackedOptimizer`) is K independent optimizers: torch's Adam, AdamW and SGD
update rules written elementwise with lr and weight decay broadcast as [K, 1, ...]; nothing couples
members (no global clipping). The schedule is torch's own scheduler run on a shadow optimizer with
one parameter group per member, so member k's lr each epoch is the lone run's.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    """K MLPs of one architecture as stacked tensors: weights [K, out, in], biases [K, out]."""

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
        self.weights = [torch.stack([s[f"{n}.weight"].detach() for s in states]).clone().requires_grad_(True) for n in self.linear_names]
        self.biases = [torch.stack([s[f"{n}.bias"].detach() for s in states]).clone().requires_grad_(True) for n in self.linear_names]

    @property
    def size(self) -> int:
        return self.weights[0].shape[0]

    def parameters(self) -> list[torch.Tensor]:
        return [t for pair in zip(self.weights, self.biases) for t in pair]

    def to(self, device: torch.device | str) -> "StackedMLP":
        self.weights = [w.detach().to(device).requires_grad_(True) for w in self.weights]
        self.biases = [b.detach().to(device).requires_grad_(True) for b in self.biases]
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [B, *input_shape] shared by all members -> logits [K, B, C]."""
        h = x.flatten(1).unsqueeze(0).expand(self.size, -1, -1)  # [K, B, in], a view: no copy
        j = 0
        for op in self.ops:
            if op == "linear":
                # b + h @ W^T per member: the lone Linear's addmm, batched.
                h = torch.baddbmm(self.biases[j].unsqueeze(1), h, self.weights[j].transpose(1, 2))
                j += 1
            elif op == "relu":
                h = torch.relu(h)
        return h

    __call__ = forward

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only the members at ``rows`` (indices into the current stack)."""
        self.weights = [w.detach()[rows].clone().requires_grad_(True) for w in self.weights]
        self.biases = [b.detach()[rows].clone().requires_grad_(True) for b in self.biases]

    def state_dict(self, row: int) -> dict[str, torch.Tensor]:
        """Member ``row``'s weights as the lone MLP's state dict (CPU copies)."""
        out: dict[str, torch.Tensor] = {}
        for n, w, b in zip(self.linear_names, self.weights, self.biases):
            out[f"{n}.weight"] = w.detach()[row].cpu().clone()
            out[f"{n}.bias"] = b.detach()[row].cpu().clone()
        return out


class StackedOptimizer:
    """K independent optimizers over stacked parameters (member = leading dim), torch's update rules.

    ``kind``: ``sgd`` (momentum, nesterov, no dampening), ``adam`` (L2 weight decay added to the
    gradient) or ``adamw`` (decoupled: p *= 1 - lr * wd), betas (0.9, 0.999), eps 1e-8, as torch's
    defaults. ``lr`` and ``weight_decay`` are [K] tensors, set before each step (:meth:`step`).
    """

    def __init__(self, params: Sequence[torch.Tensor], kind: str, *, momentum: float = 0.0, nesterov: bool = False,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if kind not in ("sgd", "adam", "adamw"):
            raise ValueError(f"unknown optimizer {kind!r}")
        self.params = list(params)
        self.kind, self.momentum, self.nesterov, self.betas, self.eps = kind, momentum, nesterov, betas, eps
        self.state: list[dict[str, Any]] = [{} for _ in self.params]
        self.steps = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr: torch.Tensor, weight_decay: torch.Tensor) -> None:
        self.steps += 1
        for p, st in zip(self.params, self.state):
            if p.grad is None:
                continue
            shape = (-1,) + (1,) * (p.dim() - 1)
            lr_k, wd_k = lr.to(p).reshape(shape), weight_decay.to(p).reshape(shape)
            g = p.grad
            if self.kind == "sgd":
                g = g + wd_k * p
                if self.momentum != 0:
                    if "buf" not in st:
                        st["buf"] = g.clone()
                    else:
                        st["buf"].mul_(self.momentum).add_(g)
                    g = g + self.momentum * st["buf"] if self.nesterov else st["buf"]
                p.sub_(lr_k * g)
                continue
            if self.kind == "adamw":
                p.mul_(1 - lr_k * wd_k)
            else:
                g = g + wd_k * p
            b1, b2 = self.betas
            if "m" not in st:
                st["m"], st["v"] = torch.zeros_like(p), torch.zeros_like(p)
            st["m"].lerp_(g, 1 - b1)
            st["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
            bc1, bc2 = 1 - b1**self.steps, 1 - b2**self.steps
            denom = (st["v"].sqrt() / math.sqrt(bc2)).add_(self.eps)
            p.sub_((lr_k / bc1) * st["m"] / denom)

    def keep(self, params: Sequence[torch.Tensor], rows: torch.Tensor) -> None:
        """Follow :meth:`StackedMLP.keep`: the new parameter tensors, their states' rows kept."""
        self.params = list(params)
        self.state = [{k: v[rows].clone() for k, v in st.items()} for st in self.state]


def stacked_kd_loss(student: torch.Tensor, teachers: torch.Tensor, labels: torch.Tensor | None, *,
                    temperature: torch.Tensor, alpha: torch.Tensor, teacher_weights: torch.Tensor | None = None,
                    combine: str = "probs") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each member's loss, hard term and soft term, each [K].

    student [K, B, C]; teachers [N, B, C] (N teachers, shared); labels [B] (< 0: unlabeled) or None;
    temperature, alpha [K]; teacher_weights [K, N] on the simplex (None: one teacher, or uniform).
    ``soft`` is the mean KL without T^2, as ``KDTerms.soft``.
    """
    k, _, c = student.shape
    n = teachers.shape[0]
    t = temperature.to(student).reshape(k, 1, 1)
    log_q = F.log_softmax(student / t, dim=-1)  # [K, B, C]
    if n == 1:
        log_p = F.log_softmax(teachers[0].unsqueeze(0) / t, dim=-1)  # [K, B, C]
        kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # [K, B]
    else:
        w = (teacher_weights if teacher_weights is not None else torch.full((k, n), 1.0 / n)).to(student).reshape(k, n, 1, 1)
        t4 = t.unsqueeze(1)  # [K, 1, 1, 1]
        if combine == "logits":
            log_p = F.log_softmax((w * teachers.unsqueeze(0)).sum(1) / t, dim=-1)
            kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        else:
            log_each = F.log_softmax(teachers.unsqueeze(0) / t4, dim=-1)  # [K, N, B, C]
            if combine == "probs":
                log_p = torch.logsumexp(log_each + torch.log(w), dim=1)
                kl = (log_p.exp() * (log_p - log_q)).sum(-1)
            elif combine == "kl_sum":
                kl_each = (log_each.exp() * (log_each - log_q.unsqueeze(1))).sum(-1)  # [K, N, B]
                kl = (w.squeeze(-1) * kl_each).sum(1)
            else:
                raise ValueError(f"unknown combine {combine!r}")
    soft = kl.mean(1)  # batchmean
    if labels is None or not bool((labels >= 0).any()):
        hard = student.new_zeros(k)
    else:
        lab = labels >= 0
        rows = student[:, lab] if not bool(lab.all()) else student
        y = labels[lab]
        hard = F.cross_entropy(rows.reshape(-1, c), y.repeat(k), reduction="none").reshape(k, -1).mean(1)
    a = alpha.to(student)
    loss = a * hard + (1 - a) * temperature.to(student) ** 2 * soft
    return loss, hard.detach(), soft.detach()


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
    x_all, y_all = train.x.to(device), train.y.to(device)
    temperature = torch.tensor([float(m.temperature) for m in members], device=device)
    alpha = torch.tensor([float(m.alpha) for m in members], device=device)
    wd = torch.tensor([float(m.weight_decay) for m in members], device=device)
    # The lone run's schedule, member by member: torch's scheduler on a shadow optimizer of K groups.
    shadow = torch.optim.SGD([{"params": [torch.zeros(0, requires_grad=True)], "lr": float(m.lr)} for m in members], lr=1.0)
    scheduler = make_scheduler(shadow, cfg)
    optimizer = StackedOptimizer(stack.parameters(), cfg.optimizer, momentum=cfg.momentum, nesterov=cfg.nesterov)
    gen = torch.Generator().manual_seed(seed)
    n = len(train)
    active = list(range(k))  # original index of each stack row
    histories = [History() for _ in members]
    errors: list[BaseException | None] = [None] * k
    final: dict[int, dict[str, torch.Tensor]] = {}
    def drop(rows_out: list[int]) -> None:
        nonlocal active, temperature, alpha, wd, weights
        for r in rows_out:
            final[active[r]] = stack.state_dict(r)
        keep = [r for r in range(len(active)) if r not in rows_out]
        idx = torch.tensor(keep, dtype=torch.long, device=device)
        if keep:
            stack.keep(idx)
            optimizer.keep(stack.parameters(), idx)
        temperature, alpha, wd, weights = temperature[idx], alpha[idx], wd[idx], weights[idx.cpu()]
        active = [active[r] for r in keep]

    for epoch in range(1, cfg.epochs + 1):
        if not active:
            break
        t0 = time.perf_counter()
        lr_all = torch.tensor([g["lr"] for g in shadow.param_groups], device=device)
        sums: dict[str, torch.Tensor] = {}
        order = torch.randperm(n, generator=gen).to(device)
        for i in range(0, n, cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            x, y = x_all[idx], y_all[idx]
            logits = stack(x)
            loss, hard, soft = stacked_kd_loss(logits, cached[:, idx], y, temperature=temperature, alpha=alpha,
                                               teacher_weights=weights if n_teachers > 1 else None, combine=combine)
            optimizer.zero_grad()
            loss.sum().backward()  # d(sum)/d(member k's rows) = member k's own gradient
            optimizer.step(lr_all[torch.tensor(active, device=device)], wd)
            for name, v in (("loss", loss.detach()), ("hard", hard), ("soft", soft)):
                sums[name] = sums.get(name, torch.zeros(k, dtype=v.dtype, device=device))
                sums[name][torch.tensor(active, device=device)] += v * len(idx)
            bad = [r for r, v in enumerate(loss.detach().tolist()) if not math.isfinite(v)]
            if bad:
                for r in bad:
                    errors[active[r]] = NonFiniteLossError(
                        f"training loss became {loss[r].item()} at epoch {epoch}, step {i // cfg.batch_size + 1}")
                drop(bad)
                if not active:
                    break
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
            metrics = {f"train_{name}": float(s[m_idx]) / n for name, s in sums.items()}
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
