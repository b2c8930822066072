"""Magnitude pruning: global unstructured (weights zeroed) and structured (channels removed).

Unstructured (Han et al. 2015): the ``sparsity`` fraction of all Linear/Conv
weights with the smallest magnitude, ranked globally across layers, is set to
zero with ``torch.nn.utils.prune`` (biases are kept). The count is exact:
``round(sparsity * N)`` weights. The iterative schedule prunes in ``steps``
rounds, each removing the same fraction of the weights still left
(s_k = 1 - (1 - s)^(k/steps)) and each followed by fine-tuning, with the masks
held fixed, so pruned weights stay zero. The reparametrisations are removed at
the end (``prune.remove``): the result is a plain module that saves whole.
Its zeros only pay off on disk through :mod:`research.compress.storage`.

Structured: whole neurons / channels are removed, so the network really shrinks
(fewer parameters and FLOPs, lower latency). This uses torch-pruning
(``torch_pruning``, PyPI ``torch-pruning``; tried with torch 2.14.1: it traces
Linear, Conv1d/2d and residual ResNets, Flatten included), which keeps coupled
layers consistent through its dependency graph. Channels are ranked by the L2
norm of their weight group; every layer loses the same fraction of its channels
(the layers producing the logits, and layers with a single channel, are never pruned), and that fraction is found
by bisection so that the model's parameter count falls to at most
``(1 - sparsity)`` of what it was, as close as channel counts allow.
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from research.evaluate import count_parameters

# Layers whose weight is pruned (unstructured) and whose channels may be removed (structured).
PRUNABLE: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)

# finetune(model, epochs): trains ``model`` in place for ``epochs`` epochs.
FinetuneFn = Callable[[nn.Module, int], object]


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, "weight") for every Linear and convolution of ``model``, in module order."""
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def effective_weight(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The weight as the forward pass uses it (``orig * mask`` while pruning reparametrises it)."""
    if hasattr(module, name + "_orig"):
        return getattr(module, name + "_orig").detach() * getattr(module, name + "_mask")
    return getattr(module, name).detach()


def measured_sparsity(model: nn.Module) -> dict[str, float]:
    """Zeros among the prunable weights, counted in the weights themselves (not in any mask)."""
    total = zeros = 0
    for m, name in prunable_weights(model):
        w = effective_weight(m, name)
        total += w.numel()
        zeros += int((w == 0).sum())
    return {"sparsity": zeros / total if total else 0.0, "weights": float(total), "weights_zero": float(zeros)}


def make_pruning_permanent(model: nn.Module) -> nn.Module:
    """Remove every ``torch.nn.utils.prune`` reparametrisation in place (weights keep their zeros)."""
    for m in model.modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                torch_prune.remove(m, hook._tensor_name)
    return model


def sparsity_schedule(sparsity: float, steps: int) -> list[float]:
    """Cumulative sparsity after each of ``steps`` rounds, each removing the same share of what is left."""
    return [1.0 - (1.0 - sparsity) ** (k / steps) for k in range(1, steps + 1)]


def split_epochs(epochs: int, steps: int) -> list[int]:
    """``epochs`` shared over ``steps`` rounds (the remainder goes to the last rounds)."""
    base, rest = divmod(epochs, steps)
    return [base + (1 if i >= steps - rest else 0) for i in range(steps)]


def global_magnitude_prune(
    model: nn.Module,
    sparsity: float,
    *,
    steps: int = 1,
    finetune: FinetuneFn | None = None,
    finetune_epochs: int = 0,
) -> nn.Module:
    """Zero the ``sparsity`` fraction of smallest-magnitude Linear/Conv weights of ``model`` (in place).

    ``steps`` = 1 is one-shot; more is the iterative schedule. After each round
    ``finetune(model, epochs)`` is called with this round's share of
    ``finetune_epochs``, while the masks keep the pruned weights at zero.
    Returns ``model`` with the reparametrisations removed.
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    params = prunable_weights(model)
    if not params:
        raise ValueError(f"{type(model).__name__} has no Linear or convolution weights to prune")
    n = sum(m.weight.numel() for m, _ in params)
    done = 0
    for target, epochs in zip(sparsity_schedule(sparsity, steps), split_epochs(finetune_epochs, steps)):
        count = round(target * n) - done  # an absolute count: the total ends exact, whatever the rounding
        if count > 0:
            scores = {(m, name): effective_weight(m, name).abs() for m, name in params}
            torch_prune.global_unstructured(params, pruning_method=torch_prune.L1Unstructured, importance_scores=scores, amount=count)
            done += count
        if finetune is not None and epochs > 0:
            finetune(model, epochs)
    return make_pruning_permanent(model)


# ---------------------------------------------------------------- structured


def output_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """Linear/Conv layers producing ``num_classes`` outputs: the classifier, never pruned."""
    out = []
    for m in model.modules():
        width = m.out_features if isinstance(m, nn.Linear) else getattr(m, "out_channels", None)
        if isinstance(m, PRUNABLE) and width == num_classes:
            out.append(m)
    return out


def _pruner(model: nn.Module, example: torch.Tensor, ratio: float, steps: int, ignored: list[nn.Module]):
    import torch_pruning as tp

    return tp.pruner.MagnitudePruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        iterative_steps=steps,
        ignored_layers=ignored,
        global_pruning=False,
    )


def fixed_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """Layers whose output channels are never removed: the classifier (:func:`output_layers`) and
    every layer with a single output channel, which cannot lose one without cutting the network."""
    single = [m for m, _ in prunable_weights(model) if m.weight.shape[0] == 1]
    out = output_layers(model, num_classes)
    return out + [m for m in single if all(m is not o for o in out)]


def _params_after(model: nn.Module, example: torch.Tensor, ratio: float, num_classes: int) -> int:
    trial = copy.deepcopy(model)
    pruner = _pruner(trial, example, ratio, 1, fixed_layers(trial, num_classes))
    pruner.step()
    return count_parameters(trial)


def max_channel_ratio(widths: list[int]) -> float:
    """The largest channel ratio at which every layer of these widths (each >= 2) keeps a channel.

    torch-pruning keeps ``int(w * (1 - r))`` of a layer's ``w`` channels, so r <= 1 - 1/w for the
    narrowest; a hair below that, since 3 * (1 - (1 - 1/3)) is 0.9999999999999998 in floating point."""
    return max(0.0, 1.0 - 1.0 / min(widths) - 1e-9) if widths else 0.0


def channel_ratio_for(model: nn.Module, sparsity: float, example: torch.Tensor, num_classes: int, *, iters: int = 16) -> float:
    """The smallest per-layer channel ratio whose pruning leaves at most (1 - sparsity) of the parameters.

    Raises ValueError when even the largest ratio (:func:`max_channel_ratio` of the layers that can
    lose channels, the classifier and single-channel layers kept whole) leaves more than that."""
    target = (1.0 - sparsity) * count_parameters(model)
    fixed = set(map(id, fixed_layers(model, num_classes)))
    widths = [m.weight.shape[0] for m, _ in prunable_weights(model) if id(m) not in fixed]
    lo, hi = 0.0, max_channel_ratio(widths)
    if hi <= 0:
        raise ValueError(f"structured pruning cannot shrink {type(model).__name__}: it has no layer that can lose channels "
                         "(only the classifier and single-channel layers)")
    smallest = _params_after(model, example, hi, num_classes)
    if smallest > target:
        raise ValueError(f"structured pruning cannot remove {sparsity:.0%} of the parameters of {type(model).__name__}: "
                         f"removing all but one channel of every layer that can lose channels leaves {smallest} of "
                         f"{count_parameters(model)} ({1 - smallest / count_parameters(model):.1%} removed at most)")
    for _ in range(iters):
        mid = (lo + hi) / 2
        if _params_after(model, example, mid, num_classes) <= target:
            hi = mid
        else:
            lo = mid
    return hi


@torch.no_grad()
def _example(example_input: torch.Tensor, model: nn.Module) -> torch.Tensor:
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return example_input[:2].to(device)


def structured_prune(
    model: nn.Module,
    sparsity: float,
    example_input: torch.Tensor,
    num_classes: int,
    *,
    steps: int = 1,
    finetune: FinetuneFn | None = None,
    finetune_epochs: int = 0,
) -> tuple[nn.Module, dict[str, float]]:
    """Remove neurons/channels of ``model`` (in place) until at most ``(1 - sparsity)`` of its
    parameters remain; fine-tune after each of ``steps`` rounds. Returns the model and
    ``{"channel_ratio", "param_fraction"}``."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    before = count_parameters(model)
    if sparsity == 0:
        return model, {"channel_ratio": 0.0, "param_fraction": 1.0}
    was_training = model.training
    model.eval()
    example = _example(example_input, model)
    ratio = channel_ratio_for(model, sparsity, example, num_classes)
    pruner = _pruner(model, example, ratio, steps, fixed_layers(model, num_classes))
    for epochs in split_epochs(finetune_epochs, steps):
        model.eval()
        pruner.step()
        if finetune is not None and epochs > 0:
            finetune(model, epochs)
    model.train(was_training)
    return model, {"channel_ratio": ratio, "param_fraction": count_parameters(model) / before}
