"""The contract of every registered compression method, one suite for all.

Every method in the registry is run here: a new method is covered by its
registration alone, with its default knobs; CASES only gives smaller knobs
(fewer epochs) or more variants for a method.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from research.compress import METHODS, CompressedModel, compress, compression_method, evaluate_compressed, parse_compress_config
from research.config import RunConfig, TrainConfig
from research.data import load_data
from research.distill import SupervisedTask
from research.evaluate import predict
from research.models import build_model
from research.pipeline import evaluate_run
from research.train import fit

FT = TrainConfig(epochs=1, batch_size=100, lr=1e-2, device="cpu", threads=1)

# method name -> knobs of each variant the suite runs (default: [{}], its defaults); tiny budgets
CASES: dict[str, list[dict]] = {
    "prune": [{"sparsity": 0.8, "finetune_epochs": 1}],
    "prune_structured": [{"sparsity": 0.5, "schedule": "iterative", "iterative_steps": 2, "finetune_epochs": 2}],
    "quantize": [{"backend": "onnxruntime"}, {"backend": "torch"}, {"backend": "torchao"}],
    "lowrank": [{"param_fraction": 0.5, "finetune_epochs": 1}],
    "transfer": [{"source": "label_subset", "pretrain_epochs": 1, "finetune_epochs": 1}],
    "executorch": [{}, {"quantize": True, "calibration_samples": 128}],
}
VARIANTS = [(name, knobs) for name in METHODS for knobs in CASES.get(name, [{}])]


def _id(variant) -> str:
    name, knobs = variant
    return "-".join([name, *(f"{k}={v}" for k, v in knobs.items() if k not in ("finetune_epochs", "pretrain_epochs"))])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return load_data("mnist1d", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def model(data):
    """A trained MNIST-1D MLP, frozen and in eval mode like a teacher handed to ``compress``."""
    torch.manual_seed(0)
    m = build_model("mnist1d_mlp", input_shape=data.input_shape, num_classes=data.num_classes)
    fit(SupervisedTask(m), data.train, FT.model_copy(update={"epochs": 3}), seed=0, progress=False)
    return m.eval().requires_grad_(False)


@pytest.fixture(scope="module", params=VARIANTS, ids=_id)
def case(request, model, data):
    """(config, the input model's state before, the compressed model), computed once per variant."""
    name, knobs = request.param
    cfg = parse_compress_config({"method": name, **knobs})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cm = compress(model, cfg, data, seed=0, finetune_cfg=FT)
    return cfg, before, cm


def test_the_suite_covers_every_registered_method():
    assert set(CASES) <= set(METHODS)  # no stale case
    assert {name for name, _ in VARIANTS} == set(METHODS) >= {"none", "prune", "prune_structured", "quantize", "lowrank", "onnx",
                                                                "transfer", "executorch"}


def test_the_input_model_is_not_changed(case, model):
    _, before, cm = case
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training and not any(p.requires_grad for p in model.parameters())  # still frozen, still eval
    assert cm.model is not model


def test_size_is_the_bytes_written_and_the_file_reloads(case, data, tmp_path):
    _, _, cm = case
    path = tmp_path / f"model{cm.format.suffix}"
    written = cm.save(path)
    assert written == os.path.getsize(path) == cm.size_bytes > 0
    again = cm.format.load(path, template=cm.model)
    torch.testing.assert_close(predict(again, data.test.x), predict(cm.model, data.test.x), rtol=0, atol=0)


def test_the_metric_keys_are_those_of_a_distillation_run(case, model, data):
    _, _, cm = case
    run = evaluate_run(model, data, RunConfig(eval={"latency_repeats": 1}))  # what a distillation run reports
    got = evaluate_compressed(cm, data, repeats=1)
    assert set(run) <= set(got), set(run) - set(got)
    assert all(math.isfinite(got[k]) for k in run), {k: got[k] for k in run}
    assert got["size_bytes"] == cm.size_bytes and got["params"] == cm.params > 0 and got["flops"] == cm.flops > 0
    assert 0.0 <= got["test_accuracy"] <= 1.0 and got["params_nonzero"] <= got["params"]


@pytest.mark.parametrize("rows", [1, 7, 300])  # 300: past the ExecuTorch program's largest batch (256)
def test_the_result_runs_on_a_batch(case, data, rows):
    _, _, cm = case
    out = predict(cm.model, data.test.x[:rows], batch_size=512)
    assert out.shape == (rows, data.num_classes) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_label_budget_and_config_round_trip(case):
    cfg, _, cm = case
    method = compression_method(cfg)
    assert cm.method == method.name and cm.tags["method"] == method.name
    label = method.label()
    assert label and label == label.strip() and " " not in label
    assert parse_compress_config(cfg.model_dump(mode="json")) == cfg  # a dumped config (studies, MLflow params) reloads as itself
    at4 = method.at_budget(4.0)
    assert type(at4) is type(cfg) and parse_compress_config(at4.model_dump(mode="json")) == at4
    assert isinstance(cm, CompressedModel) and cm.format is method.file_format
