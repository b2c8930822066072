"""Compression baselines (research.compress) on real MNIST-1D models, with tiny budgets."""

from __future__ import annotations

import math
import os

import pytest
import torch
from torch import nn

from research.compress import OrtModule, compress, evaluate_compressed, load_compact, parse_compress_config
from research.compress.finetune import label_subset_source, mnist1d_source
from research.compress.lowrank import dropped_energy_error, factorize_conv, factorize_linear, layer_rank, svd_factors
from research.compress.methods import LowRankConfig, PruneConfig, QuantizeConfig, StructuredPruneConfig, TransferConfig
from research.compress.prune import global_magnitude_prune, measured_sparsity, prunable_weights
from research.compress.storage import decode_tensor, encode_tensor, save_compact
from research.config import ConfigError, TrainConfig
from research.data import load_data
from research.distill import SupervisedTask
from research.evaluate import classification_metrics, count_flops, deployment_metrics, predict
from research.models import build_model
from research.tracking import Tracker
from research.train import fit

# One thread: on a busy 2-core machine torch's default of 2 threads is ~10x slower for these tiny models.
FT = TrainConfig(epochs=1, batch_size=100, lr=1e-2, device="cpu", threads=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_data("mnist1d", cache_dir=tmp_path_factory.mktemp("cache"))


def _trained(name: str, data, epochs: int, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(name, input_shape=data.input_shape, num_classes=data.num_classes, **kwargs)
    fit(SupervisedTask(model), data.train, FT.model_copy(update={"epochs": epochs}), seed=0, progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def mlp(data):
    return _trained("mnist1d_mlp", data, 15)


@pytest.fixture(scope="module")
def cnn(data):
    return _trained("mnist1d_cnn", data, 15)


# Sizes of the two MNIST-1D models, by hand (input length 40, 10 classes):
#   mnist1d_mlp 40-100-100-10: weights 40*100 + 100*100 + 100*10 = 15,000, + 210 biases = 15,210 parameters;
#     FLOPs (a multiply-add counts 2, biases not counted) 2 * 15,000 = 30,000.
#   mnist1d_cnn, 25 channels: Conv1d(1, 25, k5, s2, p1) on 40 -> length 19; Conv1d(25, 25, k3, s2, p1) -> 10; again -> 5;
#     Linear(125, 10). Weights 125 + 1,875 + 1,875 + 1,250 = 5,125, + 85 biases = 5,210 parameters;
#     FLOPs 2 * (25*19*5 + 25*10*75 + 25*5*75 + 1,250) = 2 * (2,375 + 18,750 + 9,375 + 1,250) = 63,500.
PARAMS = {"mlp": 15_210, "cnn": 5_210}
WEIGHTS = {"mlp": 15_000, "cnn": 5_125}
FLOPS = {"mlp": 30_000, "cnn": 63_500}


def n_params(model: nn.Module) -> int:
    """Parameters counted here, not by research.evaluate.count_parameters."""
    return sum(p.numel() for p in model.parameters())


def file_bytes(obj, path) -> int:
    """Bytes of ``torch.save(obj)`` written here to ``path`` (through a file object, as research writes it)."""
    with open(path, "wb") as f:
        torch.save(obj, f)
    return os.path.getsize(path)


def accuracy(model: nn.Module, split) -> float:
    return classification_metrics(predict(model, split.x), split.y)["accuracy"]


def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    return build_model("cifar_resnet", input_shape=(3, 8, 8), num_classes=10, widths=[8, 8, 16, 16]).eval()


# ---------------------------------------------------------------- unstructured pruning


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.97])
@pytest.mark.parametrize("schedule", ["one_shot", "iterative"])
def test_global_pruning_sparsity_is_the_requested_one(mlp, data, sparsity, schedule):
    cfg = PruneConfig(sparsity=sparsity, schedule=schedule, iterative_steps=3, finetune_epochs=3 if schedule == "iterative" else 1)
    cm = compress(mlp, cfg, data, seed=0, finetune_cfg=FT)
    n = sum(m.weight.numel() for m, _ in prunable_weights(cm.model))
    zeros = sum(int((m.weight == 0).sum()) for m, _ in prunable_weights(cm.model))
    assert abs(zeros - sparsity * n) <= 1, (zeros, sparsity * n)  # exact, after fine-tuning too
    assert cm.extra["sparsity"] == pytest.approx(zeros / n)
    assert cm.params == PARAMS["mlp"]
    # only weights are pruned: the trained biases (none of them exactly zero) all stay
    assert cm.params_nonzero == PARAMS["mlp"] - zeros == sum(int(p.count_nonzero()) for p in cm.model.parameters())
    # no pruning reparametrisation is left behind
    assert not any(k.endswith(("_orig", "_mask")) for k in cm.model.state_dict())


def test_pruning_is_global_not_per_layer(mlp):
    model = global_magnitude_prune(build_model("mnist1d_mlp", input_shape=(40,), num_classes=10), 0.0)
    assert measured_sparsity(model)["sparsity"] == 0.0
    pruned = global_magnitude_prune(_copy(mlp), 0.8)
    per_layer = [float((m.weight == 0).float().mean()) for m, _ in prunable_weights(pruned)]
    assert max(per_layer) - min(per_layer) > 0.05, per_layer  # one global threshold, uneven layer sparsities
    # every kept weight is at least as large as every pruned one
    kept = torch.cat([mp.weight[mp.weight != 0].abs() for mp, _ in prunable_weights(pruned)])
    removed = torch.cat([m0.weight[m1.weight == 0].abs() for (m0, _), (m1, _) in zip(prunable_weights(mlp), prunable_weights(pruned))])
    assert kept.min() >= removed.max()
    assert all(torch.equal(m0.bias, m1.bias) for (m0, _), (m1, _) in zip(prunable_weights(mlp), prunable_weights(pruned)))


def _copy(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def test_compress_leaves_the_input_model_unchanged(mlp, data):
    before = {k: v.clone() for k, v in mlp.state_dict().items()}
    compress(mlp, PruneConfig(sparsity=0.9, finetune_epochs=1), data, seed=0, finetune_cfg=FT)
    assert all(torch.equal(before[k], v) for k, v in mlp.state_dict().items())


def test_pruned_model_reloads_whole_and_through_mlflow_with_the_same_accuracy(mlp, data, tmp_path):
    cm = compress(mlp, PruneConfig(sparsity=0.8, finetune_epochs=1), data, seed=0, finetune_cfg=FT)
    acc = accuracy(cm.model, data.test)
    logits = predict(cm.model, data.test.x)

    path = tmp_path / "pruned.pt"
    torch.save(cm.model, path)
    again = torch.load(path, weights_only=False)
    assert torch.equal(predict(again, data.test.x), logits)
    assert accuracy(again, data.test) == acc

    compact = tmp_path / "pruned.compact.pt"
    cm.save(compact)
    assert torch.equal(predict(load_compact(compact), data.test.x), logits)

    tracker = Tracker(uri=f"sqlite:///{tmp_path}/m.db")
    with tracker.run("compress", "pruned") as handle:
        handle.log_model(cm.model, input_example=data.test.x[:2])
    loaded = tracker.load_model(f"runs:/{handle.run_id}/model")
    assert accuracy(loaded, data.test) == acc
    assert measured_sparsity(loaded)["sparsity"] == pytest.approx(0.8, abs=1e-3)


# ---------------------------------------------------------------- storage: bytes actually written


def test_sparse_model_is_small_only_stored_compactly(mlp, data, tmp_path):
    cm = compress(mlp, PruneConfig(sparsity=0.9), data, seed=0)
    written = cm.save(tmp_path / "m.compact")
    assert written == os.path.getsize(tmp_path / "m.compact") == cm.size_bytes
    with open(tmp_path / "dense.pt", "wb") as f:  # through a file object: the zip's record names do not depend on the path
        torch.save(cm.model, f)
    dense = os.path.getsize(tmp_path / "dense.pt")
    assert cm.extra["dense_size_bytes"] == dense  # torch.save stores every zero
    assert written < 0.35 * dense, (written, dense)
    # a dense model gains nothing, and loses at most a little, from the compact format
    save_compact(mlp, tmp_path / "unpruned.compact")
    torch.save(mlp, tmp_path / "unpruned.pt")
    assert os.path.getsize(tmp_path / "unpruned.compact") <= os.path.getsize(tmp_path / "unpruned.pt") + 2048


@pytest.mark.parametrize("shape,density,kind", [((100, 40), 0.3, "bitmask"), ((100, 40), 0.01, "index"), ((400, 300), 0.005, "index")])
def test_compact_encoding_round_trips(shape, density, kind):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(shape, generator=g) * (torch.rand(shape, generator=g) < density)
    e = encode_tensor(w)
    assert e is not None and e["kind"] == kind
    assert torch.equal(decode_tensor(e), w)
    assert encode_tensor(torch.randn(100, 40)) is None  # dense data stays dense


def test_sizes_are_the_bytes_written(mlp, data, tmp_path):
    for method in ("none", "quantize", "onnx"):
        cm = compress(mlp, method, data, seed=0)
        path = tmp_path / f"{method}.bin"
        cm.save(path)
        assert cm.size_bytes == os.path.getsize(path), method
    assert compress(mlp, "none", data, seed=0).size_bytes == file_bytes(mlp, tmp_path / "plain.pt")


# ---------------------------------------------------------------- structured pruning


@pytest.mark.parametrize("which", ["mlp", "cnn"])
def test_structured_pruning_really_shrinks_the_network(which, request, data, tmp_path):
    model = request.getfixturevalue(which)
    shape = data.input_shape
    cfg = parse_compress_config({"method": "prune", "structured": True, "sparsity": 0.75, "finetune_epochs": 2})
    assert isinstance(cfg, StructuredPruneConfig)
    cm = compress(model, cfg, data, seed=0, finetune_cfg=FT)
    p0, f0 = PARAMS[which], FLOPS[which]
    assert cm.params == n_params(cm.model) <= 0.25 * p0
    assert cm.params > 0.1 * p0  # as close to the target as channel counts allow, not far past it
    assert cm.params_nonzero == cm.params  # really removed, not zeroed
    assert count_flops(cm.model, shape) == cm.flops < 0.5 * f0
    out = predict(cm.model, data.test.x)
    assert out.shape == (len(data.test), 10)
    assert accuracy(cm.model, data.test) > 0.3  # it still classifies (chance is 0.1)
    assert cm.size_bytes == cm.save(tmp_path / "pruned.pt") < file_bytes(model, tmp_path / "float.pt")


def test_structured_pruning_keeps_residual_networks_consistent(data):
    from research.compress.prune import structured_prune

    model = tiny_resnet()
    x = torch.randn(4, 3, 8, 8)
    pruned, info = structured_prune(_copy(model), 0.5, x, 10, steps=2)
    assert n_params(pruned) <= 0.5 * n_params(model)
    assert info["param_fraction"] == n_params(pruned) / n_params(model)
    assert pruned(x).shape == (4, 10)


def test_structured_pruning_that_cannot_reach_the_target_says_so(data):
    from research.compress.prune import structured_prune

    model = build_model("mlp", input_shape=(40,), num_classes=10, widths=[2])  # the classifier is most of it
    with pytest.raises(ValueError, match="cannot remove"):
        structured_prune(model, 0.9, torch.randn(2, 40), 10)


# ---------------------------------------------------------------- int8 quantization

# The int8 model keeps its float model's test accuracy within this many points.
INT8_TOLERANCE = 0.02


@pytest.mark.parametrize(
    "which,backend,mode",
    [
        ("mlp", "onnxruntime", "dynamic"),
        ("cnn", "onnxruntime", "static"),
        ("mlp", "torch", "dynamic"),
        ("cnn", "torch", "static"),
        ("mlp", "torchao", "dynamic"),
    ],
)
def test_int8_stays_close_to_float_accuracy(which, backend, mode, request, data):
    model = request.getfixturevalue(which)
    cm = compress(model, QuantizeConfig(backend=backend, calibration_samples=256), data, seed=0)
    assert cm.tags["quant_mode"] == mode  # auto: dynamic for the MLP, static (calibrated) for the CNN
    float_acc, int8_acc = accuracy(model, data.test), accuracy(cm.model, data.test)
    assert abs(int8_acc - float_acc) <= INT8_TOLERANCE, (float_acc, int8_acc)
    assert float_acc > 0.45  # the models are trained, so the tolerance means something
    assert cm.params == PARAMS[which] and cm.flops == FLOPS[which]  # those of the float network it computes


def test_int8_onnx_is_smaller_than_float_onnx_and_reloads(mlp, data, tmp_path):
    q = compress(mlp, "quantize", data, seed=0)
    f = compress(mlp, "onnx", data, seed=0)
    assert isinstance(q.model, OrtModule) and isinstance(f.model, OrtModule)
    assert q.size_bytes < 0.45 * f.size_bytes, (q.size_bytes, f.size_bytes)
    torch.save(q.model, tmp_path / "q.pt")  # the ORT wrapper pickles (its session is rebuilt on load)
    again = torch.load(tmp_path / "q.pt", weights_only=False)
    assert torch.equal(predict(again, data.test.x), predict(q.model, data.test.x))


# An accuracy gap within tolerance is also what a no-op "quantization" gives: the tests below
# check that the weights really are int8, in the module and in the deployable file as written.


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
@pytest.mark.parametrize("which,max_ratio", [("mlp", 0.4), ("cnn", 0.65)])
def test_torch_backend_really_quantizes(which, max_ratio, request, data, tmp_path):
    from torch.ao.nn import quantized as nnq  # its dynamic Linear subclasses nnq.Linear

    model = request.getfixturevalue(which)
    cm = compress(model, QuantizeConfig(backend="torch", calibration_samples=128), data, seed=0)
    modules = list(cm.model.modules())
    assert not [m for m in modules if type(m) in (nn.Linear, nn.Conv1d)]  # no float layer left
    linears = [m for m in modules if isinstance(m, nnq.Linear)]
    convs = [m for m in modules if isinstance(m, nnq.Conv1d)]
    assert (len(linears), len(convs)) == ((3, 0) if which == "mlp" else (1, 3))
    assert all(m.weight().dtype == torch.qint8 for m in linears + convs)
    assert sum(m.weight().numel() for m in linears + convs) == WEIGHTS[which]
    if which == "cnn":  # static: the input is quantized once, at the entry
        assert any(isinstance(m, nnq.Quantize) for m in modules) and any(isinstance(m, nnq.DeQuantize) for m in modules)
    written = cm.save(tmp_path / "int8.pt")
    assert written == os.path.getsize(tmp_path / "int8.pt") == cm.size_bytes
    # 1 byte per weight instead of 4: the MLP's file (weights are most of it) shrinks below 0.4x;
    # the CNN's 5,125 weights share its file with ~10 KB of module pickles and zip records.
    float_bytes = file_bytes(model, tmp_path / "float.pt")
    assert written < max_ratio * float_bytes, (written, float_bytes)


def test_torchao_backend_really_quantizes(mlp, data, tmp_path):
    cm = compress(mlp, QuantizeConfig(backend="torchao"), data, seed=0)
    assert cm.fmt == "state_dict"
    linears = [m for m in cm.model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 3
    for lin in linears:
        w = lin.weight
        assert type(w) not in (torch.Tensor, nn.Parameter)  # a torchao tensor subclass ...
        inner = [getattr(w, name) for name in w.__tensor_flatten__()[0]]  # ... holding int8 data of the weight's shape
        assert any(t.dtype == torch.int8 and t.shape == w.shape for t in inner), [(t.dtype, t.shape) for t in inner]
    written = cm.save(tmp_path / "int8.sd")
    assert written == os.path.getsize(tmp_path / "int8.sd") == cm.size_bytes
    float_bytes = file_bytes(mlp.state_dict(), tmp_path / "float.sd")
    assert written < 0.4 * float_bytes, (written, float_bytes)


@pytest.mark.parametrize("which,ops", [("mlp", {"DynamicQuantizeLinear", "MatMulInteger"}), ("cnn", {"QuantizeLinear", "DequantizeLinear"})])
def test_onnxruntime_int8_file_holds_int8_weights(which, ops, request, data):
    import onnx

    model = request.getfixturevalue(which)
    cm = compress(model, QuantizeConfig(calibration_samples=128), data, seed=0)  # the default backend
    assert isinstance(cm.model, OrtModule) and cm.size_bytes == len(cm.model.model_bytes)
    graph = onnx.load_from_string(cm.model.model_bytes).graph
    assert ops <= {n.op_type for n in graph.node}, {n.op_type for n in graph.node}

    def elements(data_type: int) -> int:
        return sum(math.prod(i.dims) for i in graph.initializer if i.data_type == data_type)

    assert elements(onnx.TensorProto.INT8) >= WEIGHTS[which]  # every weight stored as int8 (plus zero points)
    assert elements(onnx.TensorProto.FLOAT) < 0.05 * WEIGHTS[which]  # only biases (dynamic) and scales stay float


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_int8_cnn_reloads_whole_and_through_mlflow(backend, cnn, data, tmp_path):
    cm = compress(cnn, QuantizeConfig(backend=backend, calibration_samples=128), data, seed=0)
    logits = predict(cm.model, data.test.x)
    torch.save(cm.model, tmp_path / "q.pt")  # torch 2.14's quantized convs need research's pickling fix for this
    assert torch.equal(predict(torch.load(tmp_path / "q.pt", weights_only=False), data.test.x), logits)
    tracker = Tracker(uri=f"sqlite:///{tmp_path}/m.db")
    with tracker.run("compress", backend) as handle:
        handle.log_model(cm.model, input_example=data.test.x[:2])
    assert torch.equal(predict(tracker.load_model(f"runs:/{handle.run_id}/model"), data.test.x), logits)


def test_torch_static_int8_explains_residual_networks():
    from research.compress.quantize import quantize_int8

    with pytest.raises(ValueError, match="onnxruntime"):
        quantize_int8(tiny_resnet(), input_shape=(3, 8, 8), calibration=torch.randn(8, 3, 8, 8), backend="torch", mode="static")


# ---------------------------------------------------------------- ONNX


@pytest.mark.parametrize("which", ["mlp", "cnn", "resnet"])
def test_onnx_runtime_agrees_with_pytorch(which, request, data):
    if which == "resnet":
        model, x = tiny_resnet(), torch.randn(64, 3, 8, 8)
        from research.compress.onnx_export import onnx_model

        ort, _ = onnx_model(model, (3, 8, 8))
    else:
        model, x = request.getfixturevalue(which), data.test.x
        cm = compress(model, "onnx", data, seed=0)
        ort = cm.model
        assert cm.extra["onnx_max_abs_diff"] <= 1e-4
    torch.testing.assert_close(predict(ort, x), predict(model, x), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(predict(ort, x[:1]), predict(model, x[:1]), atol=1e-4, rtol=1e-4)  # dynamic batch


def test_evaluate_compressed_reports_what_a_distillation_run_reports(cnn, data):
    cm = compress(cnn, "onnx", data, seed=0)
    m = evaluate_compressed(cm, data, repeats=2)
    assert set(deployment_metrics(cnn, data.input_shape, repeats=1)) <= set(m)
    assert {"val_accuracy", "test_accuracy", "test_nll", "test_ece"} <= set(m)
    assert m["test_accuracy"] == pytest.approx(accuracy(cnn, data.test), abs=1e-3)
    assert m["size_bytes"] == cm.size_bytes and m["flops"] == FLOPS["cnn"] and m["params"] == PARAMS["cnn"]


# ---------------------------------------------------------------- ExecuTorch


@pytest.fixture(scope="module")
def et_float(mlp, data):
    return compress(mlp, "executorch", data, seed=0)


@pytest.fixture(scope="module")
def et_int8(mlp, data):
    return compress(mlp, {"method": "executorch", "quantize": True, "calibration_samples": 256}, data, seed=0)


def test_executorch_float_program_matches_pytorch(et_float, mlp, data):
    from research.compress.methods.executorch_pte import EtModule

    assert isinstance(et_float.model, EtModule) and et_float.fmt == "pte"
    assert et_float.model.model_bytes[4:8] == b"ET12"  # the ExecuTorch program's flatbuffer identifier
    torch.testing.assert_close(predict(et_float.model, data.test.x), predict(mlp, data.test.x), atol=1e-4, rtol=1e-4)
    assert et_float.extra["pte_max_abs_diff"] <= 1e-4
    # XNNPACK takes the whole MLP: one delegate, nothing left to ExecuTorch's portable kernels
    assert et_float.extra["pte_delegates"] == 1 and et_float.extra["pte_ops_outside_delegates"] == 0
    assert et_float.params == PARAMS["mlp"] and et_float.flops == FLOPS["mlp"]
    assert et_float.payload_bytes == PARAMS["mlp"] * 4  # the float32 network lowered into the program


def test_executorch_int8_is_smaller_and_stays_close_to_float_accuracy(et_int8, et_float, mlp, data):
    float_acc, int8_acc = accuracy(mlp, data.test), accuracy(et_int8.model, data.test)
    assert abs(int8_acc - float_acc) <= INT8_TOLERANCE, (float_acc, int8_acc)
    assert et_int8.extra["pte_max_abs_diff"] > 1e-3  # really int8: not the float program
    assert et_int8.size_bytes < 0.45 * et_float.size_bytes, (et_int8.size_bytes, et_float.size_bytes)
    assert et_int8.tags["dtype"] == "int8" and et_float.tags["dtype"] == "float32"
    # the lowered int8 network: 15,000 int8 weights, one float32 scale and one int64 zero point per
    # output channel (100 + 100 + 10 = 210 channels), 210 float32 biases
    assert et_int8.payload_bytes == 15000 + 210 * 4 + 210 * 8 + 210 * 4 == 18360


@pytest.mark.filterwarnings("ignore:TypedStorage is deprecated")
def test_executorch_module_reloads_whole_and_through_mlflow(et_int8, data, tmp_path):
    logits = predict(et_int8.model, data.test.x)
    torch.save(et_int8.model, tmp_path / "et.pt")  # the wrapper pickles its program bytes, not its runtime session
    assert torch.equal(predict(torch.load(tmp_path / "et.pt", weights_only=False), data.test.x), logits)
    tracker = Tracker(uri=f"sqlite:///{tmp_path}/m.db")
    with tracker.run("compress", "executorch") as handle:
        handle.log_model(et_int8.model, input_example=data.test.x[:2])
    assert torch.equal(predict(tracker.load_model(f"runs:/{handle.run_id}/model"), data.test.x), logits)


def test_executorch_latency_is_measured_in_its_runtime(et_float, data):
    from research.compress.methods.executorch_pte import pte_latency_ms

    b1, b300 = pte_latency_ms(et_float.model.model_bytes, data.input_shape, [(1, 3), (300, 2)], threads=1)
    assert 0 < b1 and 0 < b300  # 300 rows: two runs of the program (its batch bound is 256)


# ---------------------------------------------------------------- low rank


def test_svd_error_is_what_the_dropped_singular_values_predict():
    torch.manual_seed(0)
    lin = nn.Linear(30, 20)
    s = torch.linalg.svdvals(lin.weight.detach().double())
    for r in (1, 5, 12):
        f = factorize_linear(lin, r)
        w_r = f[1].weight @ f[0].weight
        err = float(torch.linalg.matrix_norm(lin.weight.detach() - w_r.detach()))
        assert err == pytest.approx(math.sqrt(float((s[r:] ** 2).sum())), rel=1e-4)
        x = torch.randn(7, 30)
        torch.testing.assert_close(f(x), nn.functional.linear(x, w_r, lin.bias))
    full = factorize_linear(lin, 20)
    assert float(torch.linalg.matrix_norm(lin.weight.detach() - (full[1].weight @ full[0].weight).detach())) < 1e-5


def test_conv_channel_decomposition_error_and_output():
    torch.manual_seed(0)
    conv = nn.Conv1d(6, 12, 3, stride=2, padding=1)
    r = 4
    f = factorize_conv(conv, r)
    assert f[0].out_channels == r and f[1].kernel_size == (1,)
    # the composed kernel is the rank-r approximation of W reshaped to [out, in*k]
    w_r = torch.einsum("or,rik->oik", f[1].weight[:, :, 0], f[0].weight)
    _, _, s = svd_factors(conv.weight, r)
    err = float(torch.linalg.matrix_norm((conv.weight - w_r).detach().reshape(12, -1)))
    assert err == pytest.approx(dropped_energy_error(s, r), rel=1e-4)
    x = torch.randn(5, 6, 40)
    torch.testing.assert_close(f(x), nn.functional.conv1d(x, w_r, conv.bias, stride=2, padding=1), atol=1e-5, rtol=1e-4)
    conv2 = nn.Conv2d(4, 8, 3, padding=1)  # at full rank (8 = out channels) the decomposition is exact
    x2 = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(factorize_conv(conv2, 8)(x2), conv2(x2), atol=1e-5, rtol=1e-4)


def test_lowrank_to_a_parameter_fraction(mlp, cnn, data):
    for which, model in (("mlp", mlp), ("cnn", cnn)):
        cm = compress(model, LowRankConfig(param_fraction=0.5, finetune_epochs=1), data, seed=0, finetune_cfg=FT)
        frac = n_params(cm.model) / PARAMS[which]
        assert cm.params == n_params(cm.model)
        assert 0.4 < frac <= 0.5, frac  # a budget on the whole model, met from below
        assert cm.flops < FLOPS[which]
        assert accuracy(cm.model, data.test) > 0.3
    with pytest.raises(ValueError, match="cannot keep"):
        compress(cnn, LowRankConfig(param_fraction=0.01), data, seed=0)
    lin = nn.Linear(100, 100)
    assert layer_rank(lin, param_fraction=0.5) == 25  # 25 * (100 + 100) = half of 100 * 100
    assert layer_rank(nn.Linear(100, 10), rank=10) is None  # would not shrink: stays dense


# ---------------------------------------------------------------- transfer, distillation fine-tuning


def test_source_tasks(data, tmp_path):
    sub = label_subset_source(data, 5)
    assert int(sub.train.y.max()) == 4 and len(sub.train) < len(data.train)
    src = mnist1d_source(tmp_path, seed=7, num_samples=500)
    assert len(src.train) + len(src.val) == 500 and src.input_shape == data.input_shape
    assert not torch.equal(src.train.x[:10], data.train.x[:10])  # new samples, not the real task's
    assert abs(float(src.train.x.mean())) < 0.3 and 0.7 < float(src.train.x.std()) < 1.3  # same scale as the target
    with pytest.raises(ValueError, match="42"):
        mnist1d_source(tmp_path, seed=42)


def test_transfer_pretrains_then_finetunes(data):
    model = build_model("mnist1d_mlp", input_shape=(40,), num_classes=10)
    cfg = TransferConfig(source="label_subset", source_classes=5, pretrain_epochs=2, finetune_epochs=2)
    cm = compress(model, cfg, data, seed=0, finetune_cfg=FT)
    assert cm.extra["source_val_accuracy"] > 0.2  # five classes: chance is 0.2 on the source validation split
    assert accuracy(cm.model, data.test) > 0.2


def test_distil_then_prune_can_finetune_by_distillation(mlp, cnn, data):
    cfg = PruneConfig(sparsity=0.7, finetune_epochs=1)
    plain = compress(mlp, cfg, data, seed=0, finetune_cfg=FT)
    distilled = compress(mlp, cfg, data, seed=0, finetune_cfg=FT, teachers=[_copy(cnn)])
    assert distilled.extra["sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert not torch.equal(predict(plain.model, data.val.x), predict(distilled.model, data.val.x))  # a different loss was used


# ---------------------------------------------------------------- config


def test_config_validation_is_one_line_and_names_the_field():
    for raw, field in [
        ({"sparsity": 1.0}, "compress.sparsity"),
        ({"method": "lowrank"}, "rank or param_fraction"),
        ({"method": "lowrank", "rank": 2, "param_fraction": 0.5}, "rank or param_fraction"),
        ({"method": "quantize", "bits": 4}, "compress.bits"),
        ({"bits": 8}, "compress.bits: unknown key for method prune"),  # a knob of another method
        ({"method": "prune", "rank": 3}, "compress.rank: unknown key for method prune"),
        ({"schedule": "cubic"}, "compress.schedule"),
        ({"sparsty": 0.5}, "compress.sparsty"),
        ({"method": "transfer", "finetune_epochs": 0}, "compress.finetune_epochs"),
        ({"method": "prunning"}, "compress.method: unknown compression method 'prunning'"),
        ({"method": "quantize", "backend": "torchao", "quant_mode": "static"}, "torchao"),  # refused before any run, not mid-way
    ]:
        with pytest.raises(ConfigError) as e:
            parse_compress_config(raw)
        assert "\n" not in str(e.value) and field in str(e.value), str(e.value)
    assert parse_compress_config({"method": "lowrank", "rank": 3}).rank == 3
    with pytest.raises(ValueError):
        PruneConfig().sparsity = -0.1  # validated on assignment too


def test_a_method_registered_later_is_validated_and_run_by_name(monkeypatch, mlp, data, tmp_path):
    from typing import Literal

    from research.compress import METHODS, CompressionMethod, register_method
    from research.compress.base import FinetuneKnobs
    from research.config import RunConfig

    class ScaleConfig(FinetuneKnobs):
        method: Literal["scale"] = "scale"
        factor: float = 2.0

    class Scale(CompressionMethod):  # multiplies the last layer: a toy, registered for this test only
        name, config = "scale", ScaleConfig

        def apply(self, model, ctx):
            with torch.no_grad():
                prunable_weights(model)[-1][0].weight.mul_(self.cfg.factor)
            return self.measured(model, ctx)

    monkeypatch.setitem(METHODS, "scale", Scale)
    cfg = RunConfig(compress={"method": "scale", "factor": 3.0}, compress_source="student", student={"name": "mnist1d_mlp"}).compress
    assert isinstance(cfg, ScaleConfig) and cfg.factor == 3.0
    cm = compress(mlp, cfg, data, seed=0)
    assert cm.method == "scale" and cm.size_bytes == file_bytes(cm.model, tmp_path / "scaled.pt")
    last = prunable_weights(cm.model)[-1][0]
    assert torch.equal(last.weight, 3.0 * prunable_weights(mlp)[-1][0].weight)
    with pytest.raises(ConfigError, match="compress.rank: unknown key for method scale"):
        parse_compress_config({"method": "scale", "rank": 2})
    with pytest.raises(ValueError, match="already registered"):
        register_method(type("OtherPrune", (Scale,), {"name": "prune"}))
