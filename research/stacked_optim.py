"""K independent optimizers over stacked parameters (issue 11): member k is index k of every block.

Used by :mod:`research.population`; no MLflow, no Optuna.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


class StackedOptimizer:
    """K independent optimizers (member = index k of the first dimension of each parameter block), torch's update rules.

    ``kind``: ``sgd`` (momentum, nesterov, no dampening), ``adam`` (L2 weight decay added to the
    gradient) or ``adamw`` (decoupled: p *= 1 - lr * wd), betas (0.9, 0.999), eps 1e-8, as torch's
    defaults (torch.optim.Adam / AdamW / SGD documentation). Each :meth:`step` gets the parameter
    blocks [K, ...], their gradients and each member's lr and weight decay.

    ``fused`` (default: when this torch has them): torch's own fused kernels (``torch._fused_adam_``,
    ``_fused_adamw_``, ``_fused_sgd_``, which ``torch.optim``'s ``fused=True`` calls), so that each
    member is updated by exactly torch's optimizer. A kernel call takes one lr and one weight decay,
    so the members are grouped by (lr, wd): one call for all of them when they share both (a study
    that searches T and alpha only), one per group otherwise. The kernels are private, so the
    elementwise form (lr and weight decay broadcast per member) stays as the fallback; the fused
    calls were 1.5-2.7x faster than it here at K = 16.
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
        self.state: dict[str, list[torch.Tensor]] = {}
        self.steps = 0
        self._lists: dict[tuple[int, ...], tuple[list[torch.Tensor], ...]] = {}
        self._lists_for: tuple[torch.Tensor, ...] = ()
        self._step_t: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], lr: Sequence[float],
             weight_decay: Sequence[float]) -> None:
        """Update the blocks ``params`` (each [K, ...]) in place from ``grads`` (same shapes; they may
        be changed); ``lr`` and ``weight_decay``: one float per member. Raises ValueError when the
        lists do not match."""
        if len(params) != len(grads) or any(p.shape != g.shape for p, g in zip(params, grads)):
            raise ValueError("params and grads must be blocks of the same shapes")
        k = params[0].shape[0]
        if len(lr) != k or len(weight_decay) != k:
            raise ValueError(f"one lr and one weight decay per member: {k} members, got {len(lr)} and {len(weight_decay)}")
        self.steps += 1
        self._init_state(params)
        if self.kernel is not None:
            self._fused_step(params, grads, lr, weight_decay)
        else:
            for i, (p, g) in enumerate(zip(params, grads)):
                self._elementwise_step(i, p, g, lr, weight_decay)

    def _init_state(self, params: Sequence[torch.Tensor]) -> None:
        if self.state:
            return
        if self.kind == "sgd":
            if self.momentum != 0:  # the fused kernel fills it with the first gradient (is_first_step)
                self.state["buf"] = [torch.empty_like(p) for p in params]
        else:
            self.state["m"] = [torch.zeros_like(p) for p in params]
            self.state["v"] = [torch.zeros_like(p) for p in params]

    def _elementwise_step(self, i: int, p: torch.Tensor, g: torch.Tensor, lr: Sequence[float], weight_decay: Sequence[float]) -> None:
        shape = (-1,) + (1,) * (p.dim() - 1)
        lr_k = torch.tensor(list(lr), dtype=p.dtype, device=p.device).reshape(shape)
        wd_k = torch.tensor(list(weight_decay), dtype=p.dtype, device=p.device).reshape(shape)
        st = self.state
        if self.kind == "sgd":
            g = g.addcmul_(wd_k, p)
            if self.momentum != 0:
                buf = st["buf"][i]
                if self.steps == 1:
                    buf.copy_(g)
                else:
                    buf.mul_(self.momentum).add_(g)
                g = g.add_(buf, alpha=self.momentum) if self.nesterov else buf
            p.sub_(lr_k * g)
            return
        if self.kind == "adamw":
            p.mul_(1 - lr_k * wd_k)
        else:
            g = g.addcmul_(wd_k, p)
        b1, b2 = self.betas
        m, v = st["m"][i], st["v"][i]
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        bc1, bc2 = 1 - b1**self.steps, 1 - b2**self.steps
        denom = v.sqrt().div_(math.sqrt(bc2)).add_(self.eps)
        p.sub_(m.div(denom).mul_(lr_k / bc1))

    def _fused_step(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], lr: Sequence[float],
                    weight_decay: Sequence[float]) -> None:
        groups: dict[tuple[float, float], list[int]] = {}
        for k, key in enumerate(zip(map(float, lr), map(float, weight_decay))):
            groups.setdefault(key, []).append(k)
        # the step count already advanced, on the parameters' device: as torch.optim hands it to the kernels
        # (one tensor refilled in place: making a new one every step cost more than a fifth of the update)
        step = self._step_t
        if step is None or step.device != params[0].device:
            step = self._step_t = torch.zeros((), device=params[0].device)
        step.fill_(float(self.steps))
        b1, b2 = self.betas
        for (lr_g, wd_g), members in groups.items():
            p, g, *state = self._member_lists(params, grads, members)
            if self.kind == "sgd":
                self.kernel(p, g, state[0] if state else [], weight_decay=wd_g, momentum=self.momentum, lr=lr_g,
                            dampening=0.0, nesterov=self.nesterov, maximize=False, is_first_step=self.steps == 1)
            else:
                self.kernel(p, g, state[0], state[1], [], [step] * len(p), lr=lr_g, beta1=b1, beta2=b2,
                            weight_decay=wd_g, eps=self.eps, amsgrad=False, maximize=False)

    def _member_lists(self, params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor],
                      members: list[int]) -> tuple[list[torch.Tensor], ...]:
        """The kernel's tensor lists (params, grads, then the state's) for ``members``: the whole blocks
        when all members are in, else each block's rows. Cached per (tensors, members), since making
        the row views every step cost as much as the update."""
        tensors = (*params, *grads, *(t for ts in self.state.values() for t in ts))
        if len(tensors) != len(self._lists_for) or not all(a is b for a, b in zip(tensors, self._lists_for)):
            self._lists_for, self._lists = tensors, {}  # references, not ids: a freed tensor's id can come back
        key = tuple(members)
        if key not in self._lists:
            every = len(members) == params[0].shape[0]
            pick = (lambda ts: list(ts)) if every else (lambda ts: [t[k] for t in ts for k in members])
            self._lists[key] = (pick(params), pick(grads), *(pick(ts) for ts in self.state.values()))
        return self._lists[key]

    def keep(self, rows: torch.Tensor) -> None:
        """Keep the members at ``rows`` (follows :meth:`research.population.StackedMLP.keep`)."""
        self.state = {k: [t[rows].clone() for t in ts] for k, ts in self.state.items()}
