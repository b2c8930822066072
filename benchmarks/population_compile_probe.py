"""Does torch.compile (inductor, CPU) speed up a population's training step? A probe for issue 11.

    python benchmarks/population_compile_probe.py [--k 16] [--steps 120]

Times one stacked step of K MNIST-1D-shaped MLP students (40-100-100-10, batch 100, a transfer set
whose rows past the first 2,000 are unlabeled) two ways, in process CPU time (steadier than wall
time on a shared machine), alternating the two arms three times:

- eager: exactly ``research.population.fit_population``'s step: ``StackedMLP.train_forward``, the
  closed-form KD gradient ``kd_logit_grad``, ``StackedMLP.backward`` (into preallocated buffers),
  then ``StackedOptimizer("adam").step``;
- compiled: the same forward, closed-form gradient and backward written here as one PURE function
  (no ``out=``, no in-place writes into the stack's buffers; it returns the gradient blocks) under
  ``torch.compile(backend="inductor", dynamic=False)``, then the same eager optimizer step on
  ``stack.blocks`` with those gradients.

Before timing, both arms' gradients on one batch and the same weights are checked equal
(``torch.testing.assert_close``, atol 1e-5), so the probe cannot time different math. The loss-value
accumulation ``fit_population`` does each step (two ``addcmul_``) is in neither arm. Random data:
the speed, not the learning, is measured. Writes benchmarks/results/population_compile_probe.md.
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
from research.population import StackedMLP, StackedOptimizer, _epoch_labels, kd_logit_grad, teacher_targets  # noqa: E402


def pure_grads(blocks: list[torch.Tensor], xa: torch.Tensor, target: torch.Tensor, onehot: torch.Tensor,
               labelled: torch.Tensor, inv_t: torch.Tensor, soft_scale: torch.Tensor,
               hard_scale: torch.Tensor) -> list[torch.Tensor]:
    """``StackedMLP.train_forward`` + ``kd_logit_grad`` + ``StackedMLP.backward`` as one function
    without side effects (what torch.compile traces). blocks: [K, out, in + 1] per layer; xa [B, in + 1]
    (ones column last); target [K, C, B]; onehot [C, B]; labelled [B]; inv_t, soft_scale, hard_scale
    [K, 1, 1] as ``kd_logit_grad`` takes them. Returns the gradient blocks, shapes as ``blocks``."""
    k, b = blocks[0].shape[0], xa.shape[0]
    ones = xa.new_ones(k, 1, b)
    h = xa.t().expand(k, -1, -1)  # [K, in + 1, B]
    acts = [h]  # each layer's input, ones row last
    for a in blocks[:-1]:
        h = torch.cat([torch.bmm(a, h).relu(), ones], 1)
        acts.append(h)
    logits = torch.bmm(blocks[-1], h)  # [K, C, B]
    q = torch.softmax(logits * inv_t, 1)
    s = torch.softmax(logits, 1)
    g = (q - target) * soft_scale + (s * labelled - onehot) * hard_scale
    grads: list[torch.Tensor] = [g] * len(blocks)  # placeholders, all overwritten below
    for i in range(len(blocks) - 1, 0, -1):
        h = acts[i]
        grads[i] = torch.bmm(g, h.transpose(1, 2))
        g_in = torch.bmm(blocks[i][:, :, :-1].transpose(1, 2), g)
        g = torch.where(h[:, :-1] > 0, g_in, 0.0)  # ReLU's backward (its output > 0)
    grads[0] = torch.bmm(g, acts[0].transpose(1, 2))
    return grads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, default=16, help="members in the stack")
    ap.add_argument("--steps", type=int, default=120, help="steps per timed block")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "population_compile_probe.md")
    args = ap.parse_args()
    torch.set_num_threads(1)
    k, batch, n, classes = args.k, 100, 12000, 10
    models = []
    for i in range(k):
        torch.manual_seed(i)
        models.append(build_model("mnist1d_mlp", input_shape=(40,), num_classes=classes))
    x, y = torch.randn(n, 40), torch.randint(0, classes, (n,))
    y[2000:] = -1  # a transfer set: soft targets only
    temperature, alpha = torch.linspace(1, 20, k), torch.full((k,), 0.1)
    target, _ = teacher_targets(torch.randn(1, n, classes), temperature)  # [K, C, N]

    # One epoch's layout, as fit_population prepares it (outside the timed steps, as there)
    order = torch.randperm(n)
    x_epoch = torch.ones(n, 41)
    x_epoch[:, :-1] = x[order]
    labels = _epoch_labels(y[order], batch, classes)
    p_epoch = target.reshape(-1, n).index_select(1, order).view(target.shape)
    t_col = temperature.reshape(k, 1, 1)
    inv_t, soft_scale = 1 / t_col, (1 - alpha.reshape(k, 1, 1)) * t_col / batch
    hard_scale = labels.hard_scale.unsqueeze(1) * alpha  # [batches, K]
    n_batches = n // batch
    lr, wd = [0.01] * k, [0.0] * k

    def batch_args(j: int) -> tuple[torch.Tensor, ...]:
        i = (j % n_batches) * batch
        return (x_epoch[i : i + batch], p_epoch[:, :, i : i + batch], labels.onehot[:, i : i + batch],
                labels.labelled[i : i + batch], inv_t, soft_scale, hard_scale[j % n_batches].reshape(k, 1, 1))

    def eager_grads(stack: StackedMLP, xa, p, onehot, labelled, it, ss, hs) -> list[torch.Tensor]:
        grad, _, _ = kd_logit_grad(stack.train_forward(xa), p, onehot, labelled,
                                   inv_temperature=it, soft_scale=ss, hard_scale=hs)
        stack.backward(grad)
        return stack.grads

    compiled = torch.compile(pure_grads, backend="inductor", dynamic=False)

    def compiled_grads(stack: StackedMLP, *batch_tensors: torch.Tensor) -> list[torch.Tensor]:
        return compiled(stack.blocks, *batch_tensors)

    # The same math, checked once (the first compiled call, whose wall time is the compilation's)
    check = StackedMLP(models)
    want = [g.clone() for g in eager_grads(check, *batch_args(0))]
    t0 = time.perf_counter()
    got = compiled_grads(check, *batch_args(0))
    compile_s = time.perf_counter() - t0
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)

    def timed(grads_fn, steps: int) -> float:
        stack, opt = StackedMLP(models), StackedOptimizer("adam")
        t0 = time.process_time()
        for j in range(steps):
            # the compiled arm's fresh gradient tensors go straight to the optimizer (no copy into stack.grads)
            opt.step(stack.blocks, grads_fn(stack, *batch_args(j)), lr, wd)
        return (time.process_time() - t0) / steps

    rows = []
    for _ in range(3):
        eager, comp = timed(eager_grads, args.steps), timed(compiled_grads, args.steps)
        rows.append(f"| {1e3 * eager:.2f} | {1e3 * comp:.2f} | {eager / comp:.2f}x |")
        print(rows[-1], flush=True)
    lines = [
        "# torch.compile of a population's training step (CPU)", "",
        f"- command: `python benchmarks/population_compile_probe.py --k {k} --steps {args.steps}`; "
        f"date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.machine()}, torch {torch.__version__}, 1 thread; K = {k} stacked 40-100-100-10 MLPs, batch {batch}",
        f"- first compiled call (compilation): {compile_s:.1f} s", "",
        "| eager, ms/step (CPU time) | compiled, ms/step | eager / compiled |", "|---:|---:|---:|", *rows, "",
        "Eager: fit_population's step (StackedMLP.train_forward, the closed-form kd_logit_grad, StackedMLP.backward "
        "into preallocated buffers). Compiled: the same forward, closed-form gradient and backward as one pure "
        "function under torch.compile (inductor, dynamic=False), its gradients checked equal to the eager ones "
        "(atol 1e-5) before timing. The optimizer (StackedOptimizer's fused Adam) is eager in both arms; "
        "fit_population's per-step loss-value accumulation is in neither.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
