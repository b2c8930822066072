"""Payload bytes: the model's tensors at their stored precision, worked out by hand for each
format (float, half, int8 from torch.ao / torchao / ONNX Runtime, sparse compact), and
always smaller than the file for int8 where the file comparison had it backwards."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn
from torch.nn.utils import prune

from research.compress.onnx_export import onnx_payload_bytes
from research.compress.quantize import quantize_int8
from research.compress.storage import COMPACT, TORCH, compact_payload_bytes, encoded_payload_bytes
from research.evaluate import deployment_metrics, payload_bytes, saved_model_bytes, tensor_payload_bytes


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from research.data import load_data

    return load_data("mnist1d", cache_dir=tmp_path_factory.mktemp("cache"))


def linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 5))


def int8(model: nn.Module, backend: str) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_int8(model, input_shape=(10,), calibration=torch.randn(64, 10), backend=backend, mode="dynamic").model


def test_float_models_count_four_bytes_a_number():
    assert payload_bytes(linear()) == (50 + 5) * 4 == 220
    assert payload_bytes(linear().half()) == (50 + 5) * 2 == 110
    # BatchNorm1d(4): weight, bias, running mean and var (4 x 4 floats each); num_batches_tracked left out
    assert payload_bytes(nn.BatchNorm1d(4)) == 4 * 4 * 4 == 64
    m = linear()
    assert deployment_metrics(m, (10,), repeats=1)["payload_bytes"] == 220
    assert saved_model_bytes(m) > 220  # the file is mostly torch.save's container at this size


def test_a_pruning_reparametrisation_counts_its_dense_weight_once():
    m = linear()
    prune.l1_unstructured(m[0], "weight", amount=0.5)  # weight_orig (parameter) + weight_mask (buffer)
    assert payload_bytes(m) == 220


def test_torch_dynamic_int8():
    q = int8(linear(), "torch")
    # int8 weight 50 x 1 + its per-tensor scale (float64) and zero point (int64) 8 + 8 + float32 bias 5 x 4
    assert payload_bytes(q) == 50 + 8 + 8 + 20 == 86
    assert payload_bytes(q) < payload_bytes(linear())


def test_per_channel_quantized_tensor():
    w = torch.quantize_per_channel(torch.randn(3, 4), torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64),
                                   torch.zeros(3, dtype=torch.int64), 0, torch.qint8)
    assert tensor_payload_bytes(w) == 12 + 3 * 8 + 3 * 8 == 60


def test_torchao_int8():
    q = int8(linear(), "torchao")
    # Int8Tensor: int8 qdata 50 + one float32 scale and one int8 zero point per row (5 x 4 + 5 x 1) + float32 bias 20
    assert payload_bytes(q) == 50 + 20 + 5 + 20 == 95


def test_onnx_payload_counts_initializers_and_constants_at_their_types():
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.FLOAT16, [3], [1, 2, 3]))],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [helper.make_tensor_value_info("c", TensorProto.FLOAT16, [3])],
        initializer=[helper.make_tensor("w", TensorProto.INT8, [5, 10], np.zeros(50, dtype=np.int8)),
                     helper.make_tensor("s", TensorProto.FLOAT, [], [0.5]),
                     helper.make_tensor("b", TensorProto.FLOAT, [5], np.zeros(5, dtype=np.float32))],
    )
    model = helper.make_model(graph)
    assert onnx_payload_bytes(model.SerializeToString()) == 50 + 4 + 20 + 3 * 2 == 80
    assert len(model.SerializeToString()) != 80  # names, framing, the graph: not payload


def test_onnxruntime_int8_is_smaller_than_float():
    from research.compress.onnx_export import export_onnx

    float_bytes = export_onnx(linear(), (10,)).model_bytes
    assert onnx_payload_bytes(float_bytes) == 220  # the exporter's initializers: weight and bias
    q = int8(linear(), "onnxruntime")
    # MatMulInteger form: int8 weight 50, its float32 scale 4 and int8 zero point 1, float32 bias 20
    assert onnx_payload_bytes(q.model_bytes) == 50 + 4 + 1 + 20 == 75
    names = sorted(t.name for t in onnx.load_from_string(q.model_bytes).graph.initializer)
    assert len(names) == 4, names


def sparse_linear(nonzero: int) -> nn.Module:
    """Linear(100, 10): the first ``nonzero`` weights 1.0, the rest 0; bias all 1.0."""
    m = nn.Linear(100, 10)
    with torch.no_grad():
        m.weight.zero_()
        m.weight.view(-1)[:nonzero] = 1.0
        m.bias.fill_(1.0)
    return m


def test_sparse_payload_is_values_plus_indices():
    # 30 of 1,000 non-zero: index form, 30 int16 positions + 30 float32 values = 180 (dense 4,000;
    # bitmask 125 + 120 = 245); the dense bias 10 x 4 = 40
    assert encoded_payload_bytes(sparse_linear(30).weight) == 30 * 2 + 30 * 4 == 180
    assert compact_payload_bytes(sparse_linear(30)) == 180 + 40
    # 500 of 1,000: bitmask form, ceil(1000 / 8) = 125 mask bytes + 500 x 4 values = 2,125 (index: 3,000)
    assert compact_payload_bytes(sparse_linear(500)) == 125 + 2000 + 40
    # nothing pruned: dense
    assert compact_payload_bytes(sparse_linear(1000)) == 4000 + 40 == payload_bytes(sparse_linear(1000))
    # the format's own payload: the compact file's; the torch file stores every zero
    assert COMPACT.payload_bytes(sparse_linear(30)) == 220 and TORCH.payload_bytes(sparse_linear(30)) == 4040


def test_compact_payload_makes_pruning_permanent_first():
    m = nn.Sequential(sparse_linear(1000))
    prune.l1_unstructured(m[0], "weight", amount=970)  # the 970 smallest: all weights equal, so any 970 zeroed
    assert int(torch.count_nonzero(m[0].weight)) == 30
    assert compact_payload_bytes(m) == 180 + 40
    assert hasattr(m[0], "weight_orig")  # the model itself is left as it was


@pytest.mark.parametrize("backend", ["torch", "torchao", "onnxruntime"])
def test_compressed_int8_payload_is_below_float_where_files_can_say_otherwise(backend, data):
    """Through `compress`: payload_bytes on the CompressedModel and in its metrics, for each int8 backend."""
    from research.compress import compress, compressed_deployment_metrics

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 10))
    f = compress(mlp, "none", data, seed=0)
    q = compress(mlp, {"method": "quantize", "backend": backend, "quant_mode": "dynamic"}, data, seed=0)
    assert f.payload_bytes == (40 * 16 + 16 + 16 * 10 + 10) * 4 == 3304
    # int8 weights of both layers (640 + 160) + their scales/zero points + float32 biases (26 x 4 = 104)
    quant = {"torch": 2 * (8 + 8), "torchao": (16 + 10) * (4 + 1), "onnxruntime": 2 * (4 + 1)}[backend]
    assert q.payload_bytes == 640 + 160 + quant + 104
    assert q.payload_bytes < f.payload_bytes
    m = compressed_deployment_metrics(q, data.input_shape, repeats=1)
    assert m["payload_bytes"] == q.payload_bytes and m["size_bytes"] == q.size_bytes


def test_save_compact_of_a_model_still_carrying_pruning_hooks():
    """A model pruned with torch.nn.utils.prune and not made permanent: its computed ``weight``
    is not a leaf, which a plain deepcopy refused. The file holds the pruned weights, the model
    keeps its hooks, and the file is the one the permanently pruned model writes."""
    import os
    import tempfile

    from research.compress.storage import load_compact, save_compact

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 3))
    prune.l1_unstructured(model[0], "weight", amount=0.8)
    permanent = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 3))  # the same, pruned for good
    permanent.load_state_dict({"0.weight": model[0].weight.detach().clone(), "0.bias": model[0].bias.detach(),
                               "2.weight": model[2].weight.detach(), "2.bias": model[2].bias.detach()})
    x = torch.randn(4, 20)
    with tempfile.TemporaryDirectory() as d:
        hooked_bytes = save_compact(model, os.path.join(d, "hooked.pt"))
        back = load_compact(os.path.join(d, "hooked.pt"))
        assert hooked_bytes == save_compact(permanent, os.path.join(d, "permanent.pt"))
    assert hasattr(model[0], "weight_orig") and hasattr(model[0], "weight_mask")  # the caller's model untouched
    assert int((back[0].weight == 0).sum()) == 160  # 80 % of 200 weights
    assert torch.equal(back(x), model(x))
