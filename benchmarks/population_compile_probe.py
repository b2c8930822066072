"""Does torch.compile (inductor, CPU) speed up a population's training step? A probe for issue 11.

    python benchmarks/population_compile_probe.py [--k 16] [--steps 120]

Times one stacked step of K MNIST-1D-shaped MLP students (40-100-100-10, batch 100; forward, the
KD loss against precomputed teacher targets, backward, the stacked fused Adam) eagerly and compiled
with ``torch.compile(dynamic=False)``, in process CPU time (steadier than wall time on a shared
machine), alternating the two arms three times. Random data: the speed, not the learning, is
measured. Writes benchmarks/results/population_compile_probe.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from research.models import build_model  # noqa: E402
from research.population import StackedMLP, StackedOptimizer, kd_loss_from_targets, teacher_targets  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=16, help="members in the stack")
    ap.add_argument("--steps", type=int, default=120, help="steps per timed block")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "population_compile_probe.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    k, batch, n = args.k, 100, 12000
    models = []
    for i in range(k):
        torch.manual_seed(i)
        models.append(build_model("mnist1d_mlp", input_shape=(40,), num_classes=10))
    x, y = torch.randn(n, 40), torch.randint(0, 10, (n,))
    y[2000:] = -1  # a transfer set: soft targets only
    temperature, alpha = torch.linspace(1, 20, k), torch.full((k,), 0.1)
    target, target_c = teacher_targets(torch.randn(1, n, 10), temperature)
    target, target_c = target.permute(2, 0, 1).contiguous(), target_c.t().contiguous()  # sample-major, as fit_population

    ops = StackedMLP(models).ops

    def step(weights, biases, xb, yb, pb, cb):
        logits = StackedMLP.forward(_View(weights, biases, ops), xb)
        loss, _, _ = kd_loss_from_targets(logits, pb, cb, yb, temperature=temperature, alpha=alpha)
        return loss.sum()

    def timed(fn, steps: int) -> float:
        stack, opt = StackedMLP(models), StackedOptimizer("adam")
        order = torch.randperm(n)
        t0 = time.process_time()
        for i in range(steps):
            idx = order[(i * batch) % n : (i * batch) % n + batch]
            stack.zero_grad()
            fn(stack.weights, stack.biases, x[idx], y[idx], target[idx].permute(1, 2, 0), target_c[idx].t()).backward()
            opt.step(stack.flat, stack.flat_grad(), [0.01] * k, [0.0] * k)
        return (time.process_time() - t0) / steps

    compiled = torch.compile(step, dynamic=False)
    t0 = time.perf_counter()
    timed(compiled, 3)
    compile_s = time.perf_counter() - t0
    rows = []
    for _ in range(3):
        eager, comp = timed(step, args.steps), timed(compiled, args.steps)
        rows.append(f"| {1e3 * eager:.2f} | {1e3 * comp:.2f} | {eager / comp:.2f}x |")
        print(rows[-1], flush=True)
    lines = [
        "# torch.compile of a population's training step (CPU)", "",
        f"- command: `python benchmarks/population_compile_probe.py --k {k} --steps {args.steps}`; "
        f"date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.machine()}, torch {torch.__version__}, 1 thread; K = {k} stacked 40-100-100-10 MLPs, batch {batch}",
        f"- first compiled call (compilation): {compile_s:.1f} s", "",
        "| eager, ms/step (CPU time) | compiled, ms/step | eager / compiled |", "|---:|---:|---:|", *rows, "",
        "Compiled: forward and loss under torch.compile (inductor), the backward its AOT graph; the optimizer "
        "(torch's fused Adam per member) is eager in both arms.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


class _View:
    """The stack's forward over given weight and bias tensors (what torch.compile traces)."""

    def __init__(self, weights, biases, ops):
        self.weights, self.biases, self.ops, self.size = weights, biases, ops, weights[0].shape[0]


if __name__ == "__main__":
    main()
