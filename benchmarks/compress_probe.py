"""One-seed probe of the compression baselines on MNIST-1D (research.compress).

Trains the paper's CNN (Greydanus & Kobak: 3 conv layers of 25 channels, 5,210
parameters; Adam lr 1e-2, batch 100, 100 epochs, cosine schedule) and applies
each method at about 2x, 4x and 8x fewer parameters; int8 and ONNX rows keep
the parameters and change bytes and latency. The transfer rows train smaller
CNNs (16/11/7 channels, about 2x/4x/8x fewer parameters) pretrained on
MNIST-1D generated with seed 7 and fine-tuned, next to the same CNNs trained
from scratch for the same total number of epochs.

    .venv/bin/python benchmarks/compress_probe.py [--epochs 100] [--out table.md]

Latencies are CPU, 1 thread, medians of 50 runs; the lowest of three such
medians is reported (the machine may be shared). One seed: differences of a
point or two in accuracy are within seed noise.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

from research.compress import compress, compressed_deployment_metrics, evaluate_compressed
from research.config import TrainConfig
from research.data import load_data
from research.distill import SupervisedTask
from research.models import build_model
from research.train import fit

LATENCY_KEYS = ("latency_b1_ms", "latency_b256_ms")


def stable_metrics(cm, data, repeats: int = 50) -> dict[str, float]:
    m = evaluate_compressed(cm, data, repeats=repeats)
    for _ in range(2):
        again = compressed_deployment_metrics(cm, data.input_shape, repeats=repeats)
        for k in LATENCY_KEYS:
            m[k] = min(m[k], again[k])
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--finetune-epochs", type=int, default=20)
    ap.add_argument("--finetune-lr", type=float, default=2e-3)
    ap.add_argument("--cache-dir", default=".cache")
    ap.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = ap.parse_args()

    torch.set_num_threads(1)
    data = load_data("mnist1d", cache_dir=args.cache_dir)
    train_cfg = TrainConfig(epochs=args.epochs, batch_size=100, lr=1e-2, optimizer="adam", device="cpu", threads=1)
    ft_cfg = train_cfg.model_copy(update={"epochs": args.finetune_epochs, "lr": args.finetune_lr})

    torch.manual_seed(0)
    teacher = build_model("mnist1d_cnn", input_shape=data.input_shape, num_classes=data.num_classes)
    t0 = time.perf_counter()
    fit(SupervisedTask(teacher), data.train, train_cfg, seed=0, val=data.val, progress=False)
    print(f"teacher trained in {time.perf_counter() - t0:.0f} s")

    rows: list[tuple[str, str, dict[str, float], float]] = []

    def run(label: str, setting: str, model, method: str, **knobs) -> None:
        t = time.perf_counter()
        cm = compress(model, {"method": method, **knobs}, data, seed=0, finetune_cfg=ft_cfg, cache_dir=args.cache_dir)
        rows.append((label, setting, stable_metrics(cm, data), time.perf_counter() - t))
        r = rows[-1][2]
        print(f"{label:28s} {setting:22s} acc={r['test_accuracy']:.3f} params={r['params_nonzero']:.0f} bytes={r['size_bytes']:.0f} b1={r['latency_b1_ms']:.3f}ms", flush=True)

    ft = {"finetune_epochs": args.finetune_epochs, "finetune_lr": args.finetune_lr}  # the fine-tuning methods' knobs
    run("float32 (reference)", "-", teacher, "none")
    for factor, sparsity in ((2, 0.5), (4, 0.75), (8, 0.875)):
        run("prune unstructured 1-shot", f"{factor}x, s={sparsity}", teacher, "prune", sparsity=sparsity, **ft)
        run("prune unstructured iter.", f"{factor}x, s={sparsity}, 3 steps", teacher, "prune", sparsity=sparsity, schedule="iterative",
            iterative_steps=3, **ft)
        run("prune unstructured, no FT", f"{factor}x, s={sparsity}", teacher, "prune", sparsity=sparsity, **{**ft, "finetune_epochs": 0})
        run("prune structured", f"{factor}x, s={sparsity}", teacher, "prune_structured", sparsity=sparsity, **ft)
        run("low rank (SVD)", f"{factor}x, f={1 / factor:.3f}", teacher, "lowrank", param_fraction=1 / factor, **ft)
    run("ONNX Runtime float32", "-", teacher, "onnx")
    run("ExecuTorch XNNPACK float32", "-", teacher, "executorch")
    run("ExecuTorch XNNPACK int8", "static (pt2e)", teacher, "executorch", quantize=True)
    run("int8 onnxruntime", "static (auto)", teacher, "quantize", backend="onnxruntime")
    run("int8 torch.ao", "static (auto)", teacher, "quantize", backend="torch")
    run("int8 torch.ao", "dynamic (Linear only)", teacher, "quantize", backend="torch", quant_mode="dynamic")
    run("int8 torchao", "dynamic (Linear only)", teacher, "quantize", backend="torchao", quant_mode="dynamic")
    half = args.epochs // 2
    for factor, channels in ((2, 16), (4, 11), (8, 7)):
        torch.manual_seed(0)
        small = build_model("mnist1d_cnn", input_shape=data.input_shape, num_classes=data.num_classes, channels=channels)
        # From scratch: the same small CNN (same initial weights) trained on the target alone.
        t = time.perf_counter()
        alone = copy.deepcopy(small)
        fit(SupervisedTask(alone), data.train, train_cfg, seed=0, val=data.val, progress=False)
        cm = compress(alone, "none", data, seed=0)
        rows.append(("small CNN from scratch", f"{factor}x, {channels} ch, {args.epochs} ep", stable_metrics(cm, data), time.perf_counter() - t))
        run("small CNN transfer", f"{factor}x, {channels} ch, {half}+{args.epochs - half} ep", small, "transfer", source="mnist1d_seed",
            source_seed=7, pretrain_epochs=half, finetune_epochs=args.epochs - half, finetune_lr=1e-2)

    header = "| method | setting | test acc | test NLL | ECE | params (non-zero) | bytes | FLOPs | latency b1 ms | latency b256 ms | time s |"
    lines = [header, "|" + "---|" * 11]
    for label, setting, r, secs in rows:
        lines.append(
            f"| {label} | {setting} | {r['test_accuracy']:.3f} | {r['test_nll']:.3f} | {r['test_ece']:.3f} | "
            f"{r['params_nonzero']:.0f} | {r['size_bytes']:.0f} | {r['flops']:.0f} | {r['latency_b1_ms']:.3f} | {r['latency_b256_ms']:.3f} | {secs:.0f} |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
