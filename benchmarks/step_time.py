"""Engine overhead and teacher-logit cache benchmark on MNIST-1D (CPU).

(a) Time per training step of ``research.train.train_step`` (a ``Distiller``
    on cached teacher logits, and a ``SupervisedTask``) against a hand-written
    PyTorch loop doing the same work on the same model and batches; then a
    whole ``research.train.fit`` call against a hand-written epoch loop with
    the same batching by index.
(b) Epoch time of distillation with the teacher-logit cache against a teacher
    forward pass on every batch, with the one-off cost of filling the cache,
    on the 3,600 training samples and with a 10,000-sample transfer set.

Engine and hand-written arms run in alternating blocks (ABBA order), repeated;
figures are medians over the repeats. Run from the repository root:

    python benchmarks/step_time.py            # full run, writes benchmarks/results/step_time.md
    python benchmarks/step_time.py --quick    # smoke run (report to /tmp/step_time_quick.md)
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import io
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from research.config import TrainConfig  # noqa: E402
from research.data import Split, load_data  # noqa: E402
from research.distill import Distiller, SupervisedTask, TeacherLogitCache  # noqa: E402
from research.models import build_model  # noqa: E402
from research.train import fit, seed_everything, train_step  # noqa: E402

T, ALPHA, BATCH, LR = 4.0, 0.1, 100, 1e-2  # studies/mnist1d_distill*.yaml
OUT = Path(__file__).resolve().parent / "results" / "step_time.md"


@dataclass
class Setup:
    x: torch.Tensor  # training inputs [N, 40]
    y: torch.Tensor  # labels [N]
    teacher: nn.Module  # mnist1d_cnn, frozen (untrained: the weights do not change the timing)
    logits: torch.Tensor  # the teacher's logits for every row of x
    student: nn.Module  # mnist1d_mlp at its initial weights; each arm trains a deep copy
    batches: list[torch.Tensor]  # fixed batches of indices, shared by both arms


def make_setup(cache_dir: str, seed: int = 0) -> Setup:
    seed_everything(seed)  # deterministic kernels on, as fit() sets them: both arms run under it
    data = load_data("mnist1d", cache_dir=cache_dir)
    teacher = build_model("mnist1d_cnn", input_shape=(40,), num_classes=10)
    student = build_model("mnist1d_mlp", input_shape=(40,), num_classes=10)
    logits = TeacherLogitCache().logits(teacher, data.train.x, data.train.fingerprint())
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))
    batches = [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
    return Setup(data.train.x, data.train.y, teacher.eval(), logits, student, batches)


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# ---------------------------------------------------------------- (a) steps

def engine_steps(s: Setup, steps: int, distill: bool) -> float:
    """ms per ``train_step`` of the engine's task."""
    model = copy.deepcopy(s.student)
    task = Distiller(model, s.teacher, temperature=T, alpha=ALPHA, cached_logits=[s.logits]) if distill else SupervisedTask(model)
    task.train(True)
    opt = torch.optim.Adam(task.parameters(), lr=LR)
    t0 = time.perf_counter()
    for k in range(steps):
        idx = s.batches[k % len(s.batches)]
        train_step(task, opt, s.x[idx], s.y[idx], idx)
    return (time.perf_counter() - t0) / steps * 1e3


def hand_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, t_logits: torch.Tensor | None) -> torch.Tensor:
    """The same loss written inline: CE, or alpha * CE + (1 - alpha) * T^2 * KL(batchmean)."""
    s = model(x)
    if t_logits is None:
        return F.cross_entropy(s, y)
    soft = F.kl_div(F.log_softmax(s / T, dim=1), F.log_softmax(t_logits / T, dim=1), reduction="batchmean", log_target=True)
    return ALPHA * F.cross_entropy(s, y) + (1 - ALPHA) * T * T * soft


def hand_steps(s: Setup, steps: int, distill: bool) -> float:
    """ms per step of a plain PyTorch loop on the same model and batches."""
    model = copy.deepcopy(s.student).train()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    t0 = time.perf_counter()
    for k in range(steps):
        idx = s.batches[k % len(s.batches)]
        loss = hand_loss(model, s.x[idx], s.y[idx], s.logits[idx] if distill else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps * 1e3


# ---------------------------------------------------------------- (a) epochs

def engine_epochs(s: Setup, epochs: int, distill: bool) -> float:
    """ms per epoch of a whole ``fit`` call (setup, batching by index, logging sums; no validation)."""
    model = copy.deepcopy(s.student)
    task = Distiller(model, s.teacher, temperature=T, alpha=ALPHA, cached_logits=[s.logits]) if distill else SupervisedTask(model)
    cfg = TrainConfig(epochs=epochs, batch_size=BATCH, optimizer="adam", lr=LR, schedule="cosine", device="cpu")
    t0 = time.perf_counter()
    fit(task, Split(s.x, s.y), cfg, seed=0, progress=False)
    return (time.perf_counter() - t0) / epochs * 1e3


def hand_epochs(s: Setup, epochs: int, distill: bool) -> float:
    """ms per epoch of a hand-written loop: randperm per epoch, index, step, ``loss.item()`` summed, cosine schedule."""
    t0 = time.perf_counter()
    seed_everything(0)
    model = copy.deepcopy(s.student).train()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator().manual_seed(0)
    n = len(s.y)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, BATCH):
            idx = order[i : i + BATCH]
            loss = hand_loss(model, s.x[idx], s.y[idx], s.logits[idx] if distill else None)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
    return (time.perf_counter() - t0) / epochs * 1e3


def interleave(arms: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run each arm once per repeat, in ABBA order (reversed every other repeat) to cancel drift."""
    names = list(arms)
    out: dict[str, list[float]] = {k: [] for k in names}
    for r in range(repeats):
        for k in names if r % 2 == 0 else reversed(names):
            out[k].append(arms[k]())
    return out


def profile_engine(s: Setup, steps: int, top: int = 12) -> str:
    """cProfile of the distillation ``train_step``: top functions by own time, then research/'s by cumulative time."""
    prof = cProfile.Profile()
    prof.enable()
    engine_steps(s, steps, distill=True)
    prof.disable()

    def table(sort: str, *restrict: str | int) -> list[str]:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(sort).print_stats(*restrict)
        lines = buf.getvalue().rstrip().splitlines()
        return lines[next(i for i, line in enumerate(lines) if "ncalls" in line) :]

    research = r"(loss|distiller|train)\.py"
    return "\n".join([f"{steps} steps, top {top} by own time:", *table("tottime", top), "",
                      "research/ functions by cumulative time:", *table("cumulative", research)])


# ---------------------------------------------------------------- (b) cache

def cache_case(s: Setup, x: torch.Tensor, y: torch.Tensor, epochs: int, repeats: int) -> dict[str, float]:
    """Epoch time of fit() with cached teacher logits vs a teacher forward on every batch, and the fill cost."""
    split = Split(x, y)
    cfg = TrainConfig(epochs=epochs, batch_size=BATCH, optimizer="adam", lr=LR, schedule="cosine", device="cpu")
    cached_logits: list[torch.Tensor] = []

    def fill() -> float:  # fingerprints (teacher weights + data) and one teacher pass, as the pipeline does
        t0 = time.perf_counter()
        fresh = Split(x, y)  # a new Split recomputes its fingerprint
        cached_logits[:] = [TeacherLogitCache().logits(s.teacher, fresh.x, fresh.fingerprint())]
        return time.perf_counter() - t0

    def run(cached: bool) -> float:
        if not cached_logits:
            fill()
        task = Distiller(copy.deepcopy(s.student), s.teacher, temperature=T, alpha=ALPHA, cached_logits=cached_logits if cached else None)
        hist = fit(task, split, cfg, seed=0, progress=False)
        return median([e["epoch_time_s"] for e in hist.epochs])

    res = interleave({"fill": fill, "cached": lambda: run(True), "teacher": lambda: run(False)}, repeats)
    return {k: median(v) for k, v in res.items()}


# ---------------------------------------------------------------- report

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few repeats and steps: a smoke run (about a minute)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats per comparison (default 7; 2 with --quick)")
    ap.add_argument("--steps", type=int, default=None, help="steps per timed block in (a) (default 400; 60 with --quick)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: steadier on a shared machine)")
    ap.add_argument("--cache-dir", default=".cache", help="where MNIST-1D and its transfer set are generated/cached")
    ap.add_argument("--out", type=Path, default=None, help="markdown report (default benchmarks/results/step_time.md; with --quick a file in /tmp)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "step_time_quick.md" if args.quick else OUT
    repeats = args.repeats or (2 if args.quick else 7)
    steps = args.steps or (60 if args.quick else 400)
    fit_epochs = 2 if args.quick else 10  # 36 steps an epoch
    cache_epochs = 1 if args.quick else 3

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    s = make_setup(args.cache_dir)
    for distill in (True, False):  # warm-up: first-call allocations and lazy imports
        engine_steps(s, 20, distill), hand_steps(s, 20, distill)

    rows_a: list[tuple[str, str, float, float]] = []
    for distill, label in ((True, "Distiller, cached logits"), (False, "SupervisedTask")):
        r = interleave({"engine": lambda d=distill: engine_steps(s, steps, d), "hand": lambda d=distill: hand_steps(s, steps, d)}, repeats)
        rows_a.append((f"{label}: `train_step`, ms/step", f"{repeats} x {steps} steps", median(r["engine"]), median(r["hand"])))
        print(rows_a[-1], flush=True)
    for distill, label in ((True, "Distiller, cached logits"), (False, "SupervisedTask")):
        r = interleave({"engine": lambda d=distill: engine_epochs(s, fit_epochs, d), "hand": lambda d=distill: hand_epochs(s, fit_epochs, d)}, repeats)
        rows_a.append((f"{label}: whole `fit`, ms/epoch", f"{repeats} x {fit_epochs} epochs", median(r["engine"]), median(r["hand"])))
        print(rows_a[-1], flush=True)

    rows_b: list[tuple[str, int, dict[str, float]]] = []
    data10k = load_data("mnist1d", cache_dir=args.cache_dir, transfer_size=10000, transfer_seed=1)
    assert data10k.transfer is not None
    for name, x, y in (
        ("train (3,600)", s.x, s.y),
        ("train + transfer (13,600)", torch.cat([s.x, data10k.transfer.x]), torch.cat([s.y, data10k.transfer.y])),
    ):
        rows_b.append((name, len(y), cache_case(s, x, y, cache_epochs, repeats)))
        print(rows_b[-1], flush=True)

    slow = any(e / h > 1.05 for _, _, e, h in rows_a)
    profile = profile_engine(s, steps) if slow else ""  # where the distillation step's time goes
    total = time.perf_counter() - started
    text = report(args, repeats, rows_a, rows_b, profile, total)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


def report(args: argparse.Namespace, repeats: int, rows_a: list, rows_b: list, profile: str, total: float) -> str:
    cmd = "python benchmarks/step_time.py" + (" --quick" if args.quick else "")
    if args.quick:
        cmd += "  (smoke run: few repeats, figures rough)"
    lines = [
        "# Engine step time and teacher-logit cache (MNIST-1D, CPU)",
        "",
        f"- command: `{cmd}`; date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; total {total:.0f} s",
        f"- machine: {platform.machine()}, nproc {os.cpu_count()}, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}, Python {platform.python_version()}; shared with other work (timings noisy)",
        f"- student mnist1d_mlp, teacher mnist1d_cnn, batch {BATCH}, Adam lr {LR}, T {T}, alpha {ALPHA}; "
        "deterministic algorithms on in both arms (as fit() sets them)",
        f"- engine and hand-written arms alternate in ABBA blocks; medians over {repeats} repeats",
        "",
        "## (a) Engine vs hand-written PyTorch",
        "",
        "| what | blocks | engine | hand-written | engine / hand |",
        "|---|---|---:|---:|---:|",
        *(f"| {w} | {b} | {e:.3f} | {h:.3f} | {e / h:.3f} |" for w, b, e, h in rows_a),
        "",
        "Hand-written step: student forward, `log_softmax` + `kl_div(log_target=True, reduction='batchmean')` "
        "+ `cross_entropy`, T^2, backward, Adam step; teacher logits pre-computed and indexed by batch. "
        "Hand-written epoch: `randperm` per epoch, index the tensors, the step, `loss.item()` summed, cosine schedule. "
        "`fit` runs without validation and without a progress bar. Goal: engine / hand <= 1.05.",
        "",
        "## (b) Distillation epoch: teacher-logit cache vs teacher forward every batch",
        "",
        "| training set | samples | fill cache (once), s | epoch cached, s | epoch teacher fwd, s | uncached / cached | break-even epochs |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, n, r in rows_b:
        gain = r["teacher"] - r["cached"]
        even = f"{r['fill'] / gain:.2f}" if gain > 0 else "never"
        lines.append(f"| {name} | {n:,} | {r['fill']:.3f} | {r['cached']:.3f} | {r['teacher']:.3f} | {r['teacher'] / r['cached']:.2f} | {even} |")
    lines += [
        "",
        "Epoch time is fit()'s own `epoch_time_s` (median over the epochs of a call, then over repeats). "
        "Filling the cache = sha256 fingerprints of the teacher's weights and of the data, plus one teacher pass "
        "in eval mode (batches of 1,024); in-memory cache, no disk.",
    ]
    if profile:
        lines += ["", "## Profile of the distillation `train_step` (cProfile)", "", "```", profile, "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
