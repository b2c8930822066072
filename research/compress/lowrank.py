"""Low-rank factorisation by truncated SVD, for Linear layers and convolutions.

Linear ``W [out, in]``: W ~= U_r S_r V_r^T becomes two Linear layers,
``in -> r`` (weight S_r^1/2 V_r^T, no bias) then ``r -> out`` (weight
U_r S_r^1/2, the original bias). By Eckart-Young this is the best rank-r
approximation, with Frobenius error sqrt(sum of the dropped s_i^2).

Convolution ``W [out, in, *k]`` (groups = 1): the channel decomposition of
Zhang et al. 2016 / Jaderberg et al. 2014 -- the SVD of W reshaped to
``[out, in * prod(k)]`` gives a convolution with r output channels and the
original kernel, stride, padding and dilation (weight S_r^1/2 V_r^T reshaped
to ``[r, in, *k]``) followed by a 1x1 convolution ``r -> out`` (weight
U_r S_r^1/2, the original bias). Same error formula.

A layer is factorised only when it shrinks: r * (in' + out) < out * in'
(in' = in * prod(k)); otherwise it stays as it is. Ranks come from one global
``rank`` (capped per layer) or from ``param_fraction``, the share of each
layer's weight parameters kept: r = floor(f * out * in' / (out + in')).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A [out, r], B [r, in'], S [min]) with A @ B the rank-``rank`` truncated SVD of
    ``weight`` reshaped to ``[out, in']``; S holds all singular values (descending)."""
    w = weight.detach().reshape(weight.shape[0], -1).double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    a = (u[:, :rank] * root).to(weight.dtype)
    b = (root[:, None] * vh[:rank]).to(weight.dtype)
    return a, b, s.to(weight.dtype)


def dropped_energy_error(singular_values: torch.Tensor, rank: int) -> float:
    """The Frobenius error of the best rank-``rank`` approximation: sqrt(sum_{i>r} s_i^2)."""
    return float(singular_values[rank:].double().pow(2).sum().sqrt())


def factorize_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    a, b, _ = svd_factors(layer.weight, rank)
    first = nn.Linear(layer.in_features, rank, bias=False)
    second = nn.Linear(rank, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        first.weight.copy_(b)
        second.weight.copy_(a)
        if layer.bias is not None:
            second.bias.copy_(layer.bias)
    return nn.Sequential(first, second).to(layer.weight.device)


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def factorize_conv(conv: nn.Conv1d | nn.Conv2d | nn.Conv3d, rank: int) -> nn.Sequential:
    if conv.groups != 1:
        raise ValueError("only groups=1 convolutions can be channel-decomposed")
    dims = conv.weight.dim() - 2
    cls = _CONV[dims]
    a, b, _ = svd_factors(conv.weight, rank)
    first = cls(conv.in_channels, rank, conv.kernel_size, stride=conv.stride, padding=conv.padding,
                dilation=conv.dilation, bias=False, padding_mode=conv.padding_mode)
    second = cls(rank, conv.out_channels, 1, bias=conv.bias is not None)
    with torch.no_grad():
        first.weight.copy_(b.reshape(rank, conv.in_channels, *conv.kernel_size))
        second.weight.copy_(a.reshape(conv.out_channels, rank, *([1] * dims)))
        if conv.bias is not None:
            second.bias.copy_(conv.bias)
    return nn.Sequential(first, second).to(conv.weight.device)


def _factorizable(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    return type(m) in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and m.groups == 1


def layer_rank(m: nn.Module, *, rank: int | None = None, param_fraction: float | None = None) -> int | None:
    """The rank this layer gets, or None when factorising it would not reduce its parameters."""
    out, inn = m.weight.shape[0], m.weight[0].numel()
    if param_fraction is not None:
        r = max(1, math.floor(param_fraction * out * inn / (out + inn)))
    elif rank is not None:
        r = rank
    else:
        raise ValueError("give rank or param_fraction")
    r = min(r, out, inn)
    return r if r * (out + inn) < out * inn else None


def low_rank_factorize(model: nn.Module, *, rank: int | None = None, param_fraction: float | None = None) -> dict[str, int]:
    """Replace (in place) every Linear and groups=1 convolution that shrinks by its
    factorisation; returns {layer name: rank} of the layers replaced."""
    if (rank is None) == (param_fraction is None):
        raise ValueError("give exactly one of rank or param_fraction")
    ranks: dict[str, int] = {}
    targets = [(name, m) for name, m in model.named_modules() if name and _factorizable(m)]
    for name, m in targets:
        r = layer_rank(m, rank=rank, param_fraction=param_fraction)
        if r is None:
            continue
        new = factorize_linear(m, r) if isinstance(m, nn.Linear) else factorize_conv(m, r)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        ranks[name] = r
    return ranks
