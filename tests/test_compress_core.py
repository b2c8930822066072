"""The arithmetic of the compression methods on tiny hand-made layers, with hand-computed
expected values: the pruning schedule and exact global counts, the measured sparsity,
truncated SVD factors and ranks, and the quantization mode and calibration sample.

No training and no data set: these run in milliseconds (written to kill the mutants of
scripts/mutation.sh; tests/test_compress.py checks the methods on trained models).
"""

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from research.compress.lowrank import (
    _energy_rank,
    dropped_energy_error,
    factorize_conv,
    factorize_linear,
    layer_rank,
    low_rank_factorize,
    ranks_for_param_fraction,
    svd_factors,
)
from research.compress.prune import effective_weight, global_magnitude_prune, measured_sparsity, sparsity_schedule, split_epochs
from research.compress.quantize import calibration_batch, resolve_mode


def close(got, want, atol=1e-5):
    torch.testing.assert_close(got.detach().float(), torch.tensor(want, dtype=torch.float32), atol=atol, rtol=0)


def linear(weight, bias=None):
    w = torch.tensor(weight, dtype=torch.float32)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(w)
        if bias is not None:
            layer.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return layer


# ---------------------------------------------------------------- pruning


def test_sparsity_schedule_removes_the_same_share_of_what_is_left():
    assert sparsity_schedule(0.5, 1) == [0.5]
    got = sparsity_schedule(0.75, 2)  # keep 1/2, then 1/2 of that
    assert got == pytest.approx([0.5, 0.75], abs=1e-12)
    got = sparsity_schedule(0.875, 3)
    assert got == pytest.approx([0.5, 0.75, 0.875], abs=1e-12)


def test_split_epochs_gives_the_remainder_to_the_last_rounds():
    assert split_epochs(10, 3) == [3, 3, 4]
    assert split_epochs(11, 3) == [3, 4, 4]
    assert split_epochs(2, 3) == [0, 1, 1]
    assert split_epochs(0, 2) == [0, 0]
    assert split_epochs(5, 1) == [5]


def two_layers():
    # 8 weights with distinct magnitudes across two layers; biases are never pruned
    return nn.Sequential(linear([[0.1, -4.0], [3.0, -0.2]], bias=[0.0, 0.05]), linear([[0.3, -2.0], [1.0, 0.4]], bias=[0.0, 0.0]))


def zero_mask(model):
    return [(m.weight == 0).int().tolist() for m in model if isinstance(m, nn.Linear)]


def test_one_shot_pruning_zeros_the_globally_smallest_weights():
    model = global_magnitude_prune(two_layers(), 0.5)
    # |w| sorted: 0.1 0.2 0.3 0.4 | 1 2 3 4 -> the four smallest, two in each layer here
    assert zero_mask(model) == [[[1, 0], [0, 1]], [[1, 0], [0, 1]]]
    assert model[0].weight[0, 1].item() == -4.0 and model[1].weight[1, 0].item() == 1.0  # kept weights unchanged
    assert model[0].bias.tolist() == pytest.approx([0.0, 0.05])
    # the reparametrisation is gone: a plain module
    assert not any(hasattr(m, "weight_orig") or hasattr(m, "weight_mask") or m._forward_pre_hooks for m in model)


def test_pruning_is_global_so_one_layer_can_lose_more_than_another():
    model = global_magnitude_prune(two_layers(), 0.375)  # round(0.375 * 8) = 3 weights: 0.1, 0.2, 0.3
    assert zero_mask(model) == [[[1, 0], [0, 1]], [[1, 0], [0, 0]]]


def test_the_count_is_rounded_from_the_total():
    model = global_magnitude_prune(two_layers(), 0.3)  # round(2.4) = 2
    assert measured_sparsity(model)["weights_zero"] == 2.0


def test_iterative_pruning_fine_tunes_between_rounds_and_keeps_pruned_weights_at_zero():
    calls = []

    def finetune(model, epochs):
        zeros = sum(int((effective_weight(m) == 0).sum()) for m in model)
        calls.append((epochs, zeros))
        with torch.no_grad():  # training moves every weight; the masks must keep the pruned ones at 0
            for m in model:
                m.weight_orig.add_(0.01)
            model[1].weight_orig[1, 0] = 10.0  # the 1.0 grows: the next round must rank by the new values

    model = global_magnitude_prune(two_layers(), 0.75, steps=2, finetune=finetune, finetune_epochs=3)
    assert calls == [(1, 4), (2, 6)]  # 4 then 6 of 8 weights zero; epochs split 1 + 2
    assert measured_sparsity(model)["weights_zero"] == 6.0
    # left after round 1: -4, 3 | -2, 1; fine-tuned to -3.99, 3.01 | -1.99, 10: round 2 removes 3.01 and -1.99
    assert zero_mask(model) == [[[1, 0], [1, 1]], [[1, 1], [0, 1]]]
    assert model[1].weight[1, 0].item() == 10.0


def test_one_shot_by_default_fine_tuned_once_with_every_epoch():
    calls = []
    global_magnitude_prune(two_layers(), 0.5, finetune=lambda m, e: calls.append(e), finetune_epochs=3)
    assert calls == [3]
    global_magnitude_prune(two_layers(), 0.5, finetune=lambda m, e: calls.append(e))  # no epochs given: no fine-tuning
    assert calls == [3]
    global_magnitude_prune(two_layers(), 0.5, finetune_epochs=2)  # epochs but nothing to call: fine


def test_a_single_weight_is_pruned_when_the_count_is_one():
    model = global_magnitude_prune(two_layers(), 0.125)  # round(1.0) = 1: the 0.1
    assert zero_mask(model) == [[[1, 0], [0, 0]], [[0, 0], [0, 0]]]


def test_no_finetune_call_for_zero_epochs():
    calls = []
    global_magnitude_prune(two_layers(), 0.5, steps=2, finetune=lambda m, e: calls.append(e), finetune_epochs=1)
    assert calls == [1]  # split_epochs(1, 2) == [0, 1]


def test_zero_sparsity_changes_nothing():
    model = global_magnitude_prune(two_layers(), 0.0)
    assert measured_sparsity(model)["weights_zero"] == 0.0


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_sparsity_outside_zero_one_is_refused(sparsity):
    with pytest.raises(ValueError, match=rf"^sparsity must be in \[0, 1\), got {sparsity}$"):
        global_magnitude_prune(two_layers(), sparsity)


def test_a_model_without_weights_to_prune_is_refused():
    with pytest.raises(ValueError, match="^Sequential has no Linear or convolution weights to prune$"):
        global_magnitude_prune(nn.Sequential(nn.ReLU()), 0.5)


def test_measured_sparsity_counts_weight_zeros_not_bias_zeros():
    conv = nn.Conv1d(1, 2, 3, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[0.0, 1.0, 0.0]], [[2.0, 0.0, 3.0]]]))
        conv.bias.zero_()
    model = nn.Sequential(conv, nn.Flatten(), linear([[0.0, 1.0], [2.0, 3.0]], bias=[0.0, 0.0]))
    got = measured_sparsity(model)
    assert got == {"sparsity": pytest.approx(4 / 10), "weights": 10.0, "weights_zero": 4.0}
    assert measured_sparsity(nn.Sequential(nn.ReLU())) == {"sparsity": 0.0, "weights": 0.0, "weights_zero": 0.0}


def test_effective_weight_is_orig_times_mask_while_pruning():
    layer = linear([[1.0, -3.0], [0.5, 2.0]])
    assert effective_weight(layer).tolist() == [[1.0, -3.0], [0.5, 2.0]]
    torch_prune.l1_unstructured(layer, "weight", amount=1)
    with torch.no_grad():
        layer.weight_orig.fill_(7.0)  # the forward weight is only refreshed by the pre-hook; read orig * mask
    assert effective_weight(layer).tolist() == [[7.0, 7.0], [0.0, 7.0]]
    assert not effective_weight(layer).requires_grad


# ---------------------------------------------------------------- low rank


def test_svd_factors_of_a_diagonal_matrix():
    w = torch.diag(torch.tensor([3.0, 2.0, 1.0]))
    a, b, s = svd_factors(w, 2)
    assert a.shape == (3, 2) and b.shape == (2, 3) and a.dtype == b.dtype == s.dtype == torch.float32
    assert s.tolist() == pytest.approx([3.0, 2.0, 1.0])
    close(a @ b, torch.diag(torch.tensor([3.0, 2.0, 0.0])).tolist())
    # balanced split: both factors carry sqrt(s)
    assert sorted(a.abs().max(0).values.tolist()) == pytest.approx([math.sqrt(2), math.sqrt(3)])
    assert sorted(b.abs().max(1).values.tolist()) == pytest.approx([math.sqrt(2), math.sqrt(3)])


def test_dropped_energy_error_is_the_root_of_the_dropped_squares():
    s = torch.tensor([3.0, 2.0, 1.0])
    assert dropped_energy_error(s, 1) == pytest.approx(math.sqrt(5))
    assert dropped_energy_error(s, 0) == pytest.approx(math.sqrt(14))
    assert dropped_energy_error(s, 3) == 0.0


def test_factorized_linear_is_the_rank_r_layer_with_the_original_bias():
    layer = linear([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], bias=[0.5, -1.0, 2.0, 0.25])
    f = factorize_linear(layer, 2)
    first, second = f
    assert (first.in_features, first.out_features, first.bias) == (3, 2, None)
    assert (second.in_features, second.out_features) == (2, 4)
    x = torch.tensor([[1.0, 1.0, 1.0], [2.0, -1.0, 4.0]])
    want = torch.tensor([[3.5, 1.0, 2.0, 0.25], [6.5, -3.0, 2.0, 0.25]])  # the third input (s = 1) dropped
    close(f(x), want.tolist())
    no_bias = factorize_linear(linear([[1.0, 2.0], [3.0, 4.0]]), 1)
    assert no_bias[1].bias is None


def test_factorized_conv_keeps_kernel_stride_padding_and_bias():
    conv = nn.Conv1d(1, 2, 3, stride=2, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[1.0, 2.0, 3.0]], [[2.0, 4.0, 6.0]]]))  # rank 1
        conv.bias.copy_(torch.tensor([0.5, -0.5]))
    f = factorize_conv(conv, 1)
    first, second = f
    assert (first.out_channels, first.kernel_size, first.stride, first.padding, first.bias) == (1, (3,), (2,), (1,), None)
    assert (second.in_channels, second.out_channels, second.kernel_size) == (1, 2, (1,))
    x = torch.tensor([[[1.0, 0.0, -1.0, 2.0, 1.0]]])
    # by hand: padded [0, 1, 0, -1, 2, 1, 0], windows at 0, 2, 4 -> [1, 2, 3] . window = 2, 4, 4
    want = [[[2.5, 4.5, 4.5], [3.5, 7.5, 7.5]]]
    close(f(x), want)
    close(conv(x), want)
    with pytest.raises(ValueError, match="^only groups=1 convolutions can be channel-decomposed$"):
        factorize_conv(nn.Conv1d(2, 2, 3, groups=2), 1)


def test_factorized_conv_keeps_dilation_and_padding_mode():
    conv = nn.Conv1d(1, 2, 3, padding=2, dilation=2, padding_mode="circular")
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[1.0, -1.0, 2.0]], [[3.0, -3.0, 6.0]]]))  # rank 1
    x = torch.tensor([[[1.0, 0.0, -1.0, 2.0, 1.0, 3.0]]])
    close(factorize_conv(conv, 1)(x), conv(x).tolist())


def test_factorized_conv_without_bias_has_no_bias():
    f = factorize_conv(nn.Conv1d(2, 4, 3, bias=False), 1)
    assert f[0].bias is None and f[1].bias is None


def test_layer_rank_is_kept_only_when_it_shrinks_the_layer():
    square = nn.Linear(10, 10)  # 100 weights; rank r costs 20 r
    assert layer_rank(square, rank=3) == 3
    assert layer_rank(square, rank=4) == 4  # 80 < 100
    assert layer_rank(square, rank=5) is None  # 100, not fewer
    assert layer_rank(square, param_fraction=0.5) == 2  # floor(0.5 * 100 / 20)
    assert layer_rank(square, param_fraction=0.01) == 1  # at least rank 1
    wide = nn.Linear(100, 4)  # 400 weights; rank r costs 104 r; rank capped at 4
    assert layer_rank(wide, rank=3) == 3
    assert layer_rank(wide, rank=50) is None  # capped to 4: 416 > 400
    conv = nn.Conv1d(2, 8, 5)  # in' = 10, out = 8: 80 weights, rank r costs 18 r
    assert layer_rank(conv, rank=4) == 4 and layer_rank(conv, rank=5) is None
    assert layer_rank(nn.Linear(10, 1), rank=1) is None  # one output: 11 > 10
    with pytest.raises(ValueError, match="^give rank or param_fraction$"):
        layer_rank(square)


def test_energy_rank_is_the_fewest_values_holding_that_share():
    s = torch.tensor([3.0, 2.0, 1.0])  # squares 9, 4, 1: cumulative 9, 13, 14
    assert _energy_rank(s, 0.0) == 1
    assert _energy_rank(s, 9 / 14) == 1
    assert _energy_rank(s, 0.65) == 2
    assert _energy_rank(s, 13 / 14) == 2
    assert _energy_rank(s, 0.95) == 3
    assert _energy_rank(s, 1.0) == 3


def diag_model():
    layer = nn.Linear(8, 8, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.diag(torch.arange(8.0, 0.0, -1.0)))
    return nn.Sequential(layer)


def test_ranks_for_a_parameter_fraction_use_the_whole_budget():
    # 64 weights; rank r costs 16 r: budget 0.5 -> 32 -> rank 2; budget 0.8 -> 51.2 -> rank 3
    assert ranks_for_param_fraction(diag_model(), 0.5) == {"0": 2}
    assert ranks_for_param_fraction(diag_model(), 0.8) == {"0": 3}
    assert ranks_for_param_fraction(diag_model(), 0.25) == {"0": 1}
    with pytest.raises(ValueError, match=r"^low-rank factorisation cannot keep only 20.0% of the parameters of Sequential: "
                                         r"rank 1 everywhere still leaves 25.0%$"):
        ranks_for_param_fraction(diag_model(), 0.2)  # rank 1 alone is 16 of 64


def test_ranks_for_a_parameter_fraction_of_a_wide_layer():
    layer = nn.Linear(8, 4, bias=False)  # 32 weights, singular values 4 3 2 1; rank r costs 12 r, shrinks for r <= 2
    with torch.no_grad():
        layer.weight.copy_(torch.cat([torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0])), torch.zeros(4, 4)], 1))
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(4, 1, bias=False))  # + 4 weights; the last layer never shrinks
    assert ranks_for_param_fraction(model, 0.8) == {"0": 2}  # 28.8 of 36: rank 2 leaves 24 + 4 = 28
    assert ranks_for_param_fraction(model, 0.75) == {"0": 1}  # 27: 28 is too many, rank 1 leaves 16
    assert ranks_for_param_fraction(model, 1.0) == {}  # everything may stay: nothing is factorised


def test_a_rank_one_layer_never_gets_more_than_rank_one():
    layer = nn.Linear(8, 4, bias=False)
    with torch.no_grad():  # every row a multiple of one vector: singular values (s, 0, 0, 0)
        layer.weight.copy_(torch.outer(torch.tensor([1.0, 2.0, -1.0, 0.5]), torch.arange(1.0, 9.0)))
    model = nn.Sequential(layer, nn.ReLU(), nn.Linear(4, 1, bias=False))
    assert ranks_for_param_fraction(model, 0.8) == {"0": 1}  # rank 2 would fit the budget (28 of 28.8) but adds nothing


def test_low_rank_factorize_replaces_the_layers_in_place():
    model = diag_model()
    assert low_rank_factorize(model, rank=2) == {"0": 2}
    assert isinstance(model[0], nn.Sequential) and model[0][0].out_features == 2
    x = torch.ones(1, 8)
    close(model(x), [[8.0, 7.0, 0, 0, 0, 0, 0, 0]])
    nested = nn.Sequential(nn.Sequential(nn.Linear(8, 8), nn.ReLU()), nn.Linear(8, 2))
    assert low_rank_factorize(nested, rank=1) == {"0.0": 1, "1": 1}
    assert isinstance(nested[0][0], nn.Sequential) and isinstance(nested[1], nn.Sequential)
    by_fraction = diag_model()
    assert low_rank_factorize(by_fraction, param_fraction=0.5) == {"0": 2}
    assert sum(p.numel() for p in by_fraction.parameters()) == 32
    conv_model = nn.Sequential(nn.Conv1d(4, 8, 3))
    assert low_rank_factorize(conv_model, rank=1) == {"0": 1} and isinstance(conv_model[0][0], nn.Conv1d)


@pytest.mark.parametrize("kwargs", [{}, {"rank": 2, "param_fraction": 0.5}])
def test_low_rank_factorize_needs_exactly_one_of_rank_and_fraction(kwargs):
    with pytest.raises(ValueError, match="^give exactly one of rank or param_fraction$"):
        low_rank_factorize(diag_model(), **kwargs)


# ---------------------------------------------------------------- quantization


def test_auto_mode_is_static_for_convolutions_and_dynamic_otherwise():
    mlp = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    cnn = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(4, 2))
    assert resolve_mode(mlp, "auto") == "dynamic"
    assert resolve_mode(cnn, "auto") == "static"
    assert resolve_mode(mlp, "static") == "static" and resolve_mode(cnn, "dynamic") == "dynamic"
    with pytest.raises(ValueError, match="quant_mode must be"):
        resolve_mode(mlp, "int4")


def test_calibration_batch_draws_distinct_rows_in_order():
    x = torch.arange(20.0).reshape(10, 2)
    assert calibration_batch(x, 10, seed=0) is x and calibration_batch(x, 50, seed=0) is x
    got = calibration_batch(x, 4, seed=1)
    rows = (got[:, 0] / 2).long().tolist()
    assert len(rows) == 4 == len(set(rows)) and rows == sorted(rows)
    assert torch.equal(got, x[rows])
    want = torch.randperm(10, generator=torch.Generator().manual_seed(1))[:4].sort().values.tolist()
    assert rows == want  # the seed's own draw, not another one
    assert torch.equal(calibration_batch(x, 4, seed=1), got)
    assert calibration_batch(x, 9, seed=3).shape == (9, 2)
