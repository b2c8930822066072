"""Compression baselines, measured like a distillation run.

    from research.compress import CompressConfig, compress, evaluate_compressed
    cm = compress(trained_model, "prune", CompressConfig(sparsity=0.9, finetune_epochs=5),
                  data, seed=0, finetune_cfg=train_cfg)
    metrics = evaluate_compressed(cm, data)   # test_accuracy, size_bytes, latency_b1_ms, ...

Methods (``CompressConfig.method``):

* ``none``: the model as it is (the reference row of a comparison);
* ``prune``: global magnitude pruning, unstructured (exact sparsity, stored
  compactly) or ``structured`` (channels removed), one-shot or iterative,
  with fine-tuning (:mod:`.prune`);
* ``quantize``: int8, dynamic for Linear / static calibrated for convolutions,
  by ONNX Runtime, torch.ao or torchao (:mod:`.quantize`);
* ``lowrank``: truncated SVD of Linear layers, channel decomposition of
  convolutions, with fine-tuning (:mod:`.lowrank`);
* ``onnx``: the float model exported to ONNX and run by ONNX Runtime (:mod:`.onnx_export`);
* ``transfer``: pretrain on a source task, fine-tune on the real one (:mod:`.finetune`).

Every function takes any ``nn.Module`` (a distilled student included), never
changes it, and returns a new model: "distil then quantize / prune" is
``compress(distilled_student, ...)``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from research.config import DistillConfig, TrainConfig
from research.data import DataBundle
from research.evaluate import count_flops, count_parameters

from .config import METHODS, CompressConfig, parse_compress_config
from .finetune import finetune_config, finetuner, label_subset_source, mnist1d_source, pretrain_then_finetune
from .lowrank import low_rank_factorize
from .metrics import compressed_deployment_metrics, evaluate_compressed
from .onnx_export import OrtModule, max_abs_difference, onnx_model, ort_latency_ms
from .prune import global_magnitude_prune, measured_sparsity, structured_prune
from .quantize import calibration_batch, quantize_int8
from .storage import deployable_bytes, load_compact, save_compact, write_deployable

__all__ = [
    "METHODS",
    "CompressConfig",
    "CompressedModel",
    "OrtModule",
    "compress",
    "compressed_deployment_metrics",
    "evaluate_compressed",
    "load_compact",
    "ort_latency_ms",
    "parse_compress_config",
    "save_compact",
]


@dataclass
class CompressedModel:
    """A compressed model and what it costs to deploy.

    ``model`` runs under ``research.evaluate.predict`` (an ``OrtModule`` for the
    ONNX Runtime forms). ``size_bytes`` is the size of its deployable form
    (``fmt``) as really written; ``save(path)`` writes that same form.
    ``params``/``params_nonzero``/``flops`` are those of the network it
    computes (for int8 forms: of the float network that was quantized).
    """

    model: nn.Module
    method: str
    fmt: str  # torch | compact | onnx | state_dict (see research.compress.storage.write_deployable)
    size_bytes: int
    params: int
    params_nonzero: int
    flops: int
    extra: dict[str, float] = field(default_factory=dict)  # numbers worth logging as metrics
    tags: dict[str, str] = field(default_factory=dict)  # words worth logging as tags (backend, exporter, ...)

    def save(self, path: str | Path) -> int:
        """Write the deployable form to ``path``; returns the bytes written."""
        return write_deployable(self.model, self.fmt, path)


def _resolve(cfg: CompressConfig, method: str | None) -> CompressConfig:
    if method is None or method == cfg.method:
        return cfg
    return CompressConfig.model_validate({**cfg.model_dump(), "method": method})


def _summary(model: nn.Module, method: str, fmt: str, input_shape, *, reference: nn.Module | None = None,
             extra: dict[str, float] | None = None, tags: dict[str, str] | None = None) -> CompressedModel:
    """Measure a finished model; ``reference`` is the float torch network when ``model`` is int8/ONNX."""
    net = reference if reference is not None else model
    return CompressedModel(
        model=model, method=method, fmt=fmt, size_bytes=deployable_bytes(model, fmt),
        params=count_parameters(net), params_nonzero=count_parameters(net, nonzero=True),
        flops=count_flops(net, input_shape), extra=dict(extra or {}), tags=dict(tags or {}),
    )


def compress(
    model: nn.Module,
    method: str | None,
    cfg: CompressConfig,
    data: DataBundle,
    *,
    seed: int,
    finetune_cfg: TrainConfig | None = None,
    teachers: Sequence[nn.Module] = (),
    distill: DistillConfig | None = None,
    cache_dir: str | Path = ".cache",
    threads: int = 1,
    progress: bool = False,
) -> CompressedModel:
    """Apply ``method`` (None: ``cfg.method``) to a copy of ``model``.

    Fine-tuning (prune, lowrank, transfer) trains with ``finetune_cfg`` (default
    TrainConfig()) for ``cfg.finetune_epochs`` epochs at ``cfg.finetune_lr`` (if
    set) on ``data.train``, validating on ``data.val``; with ``teachers`` it
    distils from all of them as ``distill`` says (``research.distill.build_distiller``:
    objective, weights, combine, logit cache). Calibration (static int8) uses
    ``cfg.calibration_samples`` training samples. ``threads``: ONNX Runtime
    intra-op threads of the returned ``OrtModule``. ``cache_dir``: where
    MNIST-1D's cached arrays live (transfer from ``mnist1d_seed``).
    """
    cfg = _resolve(cfg, method)
    shape = data.input_shape
    work = copy.deepcopy(model)
    work.requires_grad_(True)  # a frozen teacher is a valid input; its copy must be fine-tunable
    was_training = work.training
    ft = finetuner(data, finetune_cfg, lr=cfg.finetune_lr, seed=seed, teachers=teachers, distill=distill, progress=progress)
    steps = cfg.iterative_steps if cfg.schedule == "iterative" else 1
    tags = {"method": cfg.method}

    if cfg.method == "none":
        return _summary(work.cpu().eval(), "none", "torch", shape, tags=tags)

    if cfg.method == "prune" and not cfg.structured:
        work = global_magnitude_prune(work, cfg.sparsity, steps=steps, finetune=ft, finetune_epochs=cfg.finetune_epochs)
        work = work.cpu().train(was_training)
        s = measured_sparsity(work)
        extra = {**s, "target_sparsity": cfg.sparsity, "dense_size_bytes": float(deployable_bytes(work, "torch"))}
        return _summary(work, "prune", "compact", shape, extra=extra, tags={**tags, "pruning": "unstructured", "schedule": cfg.schedule})

    if cfg.method == "prune":
        work, info = structured_prune(work, cfg.sparsity, data.train.x, data.num_classes, steps=steps, finetune=ft,
                                      finetune_epochs=cfg.finetune_epochs)
        work = work.cpu().train(was_training)
        extra = {**info, "target_sparsity": cfg.sparsity, "params_before": float(count_parameters(model))}
        return _summary(work, "prune", "torch", shape, extra=extra, tags={**tags, "pruning": "structured", "schedule": cfg.schedule})

    if cfg.method == "lowrank":
        ranks = low_rank_factorize(work, rank=cfg.rank, param_fraction=cfg.param_fraction)
        if cfg.finetune_epochs:
            ft(work, cfg.finetune_epochs)
        work = work.cpu().train(was_training)
        extra = {
            "layers_factorized": float(len(ranks)),
            "rank_min": float(min(ranks.values())) if ranks else 0.0,
            "rank_max": float(max(ranks.values())) if ranks else 0.0,
            "param_fraction": count_parameters(work) / count_parameters(model),
        }
        return _summary(work, "lowrank", "torch", shape, extra=extra, tags={**tags, "ranks": ",".join(f"{k}={v}" for k, v in ranks.items())})

    if cfg.method == "quantize":
        reference = work.cpu().eval()
        calib = calibration_batch(data.train.x, cfg.calibration_samples, seed=seed)
        q = quantize_int8(reference, input_shape=shape, calibration=calib, backend=cfg.backend, mode=cfg.quant_mode, threads=threads)
        extra = {"bits": float(cfg.bits), "float_size_bytes": float(deployable_bytes(reference, "torch"))}
        return _summary(q.model, "quantize", q.fmt, shape, reference=reference, extra=extra,
                        tags={**tags, **q.tags, "backend": cfg.backend, "quant_mode": q.mode})

    if cfg.method == "onnx":
        reference = work.cpu().eval()
        ort, exporter = onnx_model(reference, shape, threads=threads)
        extra = {"onnx_max_abs_diff": max_abs_difference(ort, reference, data.val.x[:512])}
        return _summary(ort, "onnx", "onnx", shape, reference=reference, extra=extra, tags={**tags, "exporter": exporter})

    if cfg.method == "transfer":
        if cfg.source == "mnist1d_seed":
            if not data.name.startswith("mnist1d"):
                raise ValueError(f"transfer source 'mnist1d_seed' needs the mnist1d dataset, not {data.name!r}; use 'label_subset'")
            source = mnist1d_source(cache_dir, seed=cfg.source_seed, num_samples=cfg.source_samples)
        else:
            source = label_subset_source(data, cfg.source_classes)
        pre, post = pretrain_then_finetune(
            work, source, data, seed=seed, teachers=teachers, distill=distill, progress=progress,
            pretrain_cfg=finetune_config(finetune_cfg, epochs=cfg.pretrain_epochs, lr=cfg.finetune_lr),
            finetune_cfg=finetune_config(finetune_cfg, epochs=cfg.finetune_epochs, lr=cfg.finetune_lr),
        )
        work = work.cpu().train(was_training)
        extra = {"source_val_accuracy": pre.last.get("val_accuracy", float("nan")), "source_train_samples": float(len(source.train))}
        return _summary(work, "transfer", "torch", shape, extra=extra, tags={**tags, "source": source.name})

    raise ValueError(f"unknown compression method {cfg.method!r}; choose one of {', '.join(METHODS)}")
