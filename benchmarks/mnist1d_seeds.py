"""MNIST-1D defaults over seeds: the closing-note table.

Four rows, each trained with the studies' own hyperparameters (no tuning on
test) for every seed: (1) the CNN teacher (teachers.0.seed = seed), (2) the
MLP student alone, (3) the MLP distilled on the 3,600 labelled training
samples (studies/mnist1d_distill_labelled.yaml), (4) the MLP distilled with
the 50,000-sample transfer set (studies/mnist1d_distill.yaml). By default each
seed's student is distilled from that seed's own teacher; --seed0-teacher
distils every seed from the seed-0 teacher. Teachers are logged to a
throw-away MLflow store in a temporary folder; students are not tracked.
Teacher logits are cached in memory only (nothing under --cache-dir/teacher_logits).

    python benchmarks/mnist1d_seeds.py            # about 10 minutes on 2 cores
    python benchmarks/mnist1d_seeds.py --smoke    # a few epochs, to check the script
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from research import stats  # noqa: E402
from research.config import RunConfig, load_run_config  # noqa: E402
from research.distill import TeacherLogitCache  # noqa: E402
from research.pipeline import RunContext, RunResult, Teacher, load_run_data, train_student, train_teacher  # noqa: E402
from research.stats import format_mean_std  # noqa: E402
from research.tracking import Tracker  # noqa: E402

LABELLED = ROOT / "studies" / "mnist1d_distill_labelled.yaml"
TRANSFER = ROOT / "studies" / "mnist1d_distill.yaml"
OUT = ROOT / "benchmarks" / "results" / "mnist1d_seeds.md"
# (role, row label, published test accuracy: Greydanus & Kobak, ICML 2024)
ROWS = (
    ("teacher", "CNN teacher (mnist1d_cnn)", "94%"),
    ("student", "MLP alone (mnist1d_mlp)", "68%"),
    ("distill", "MLP distilled, 3,600 labelled samples", "-"),
    ("distill_transfer", "MLP distilled, + 50,000 transfer set", "-"),
)
SMOKE = {  # overrides that shrink every budget, for --smoke
    LABELLED: ["teachers.0.train.epochs=2", "train.epochs=2"],
    TRANSFER: ["teachers.0.train.epochs=2", "train.epochs=1", "baseline_train.epochs=2"],
}


def config(path: Path, cache_dir: str, smoke: bool, *extra: str) -> RunConfig:
    return load_run_config(path, [f"data.cache_dir={cache_dir}", *(SMOKE[path] if smoke else []), *extra])


def timed(results: list[RunResult], fn, *args, **kwargs):
    """Call fn, stamp the call's whole wall time (incl. cache fill and evaluation) on its RunResult."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    result = out[1] if isinstance(out, tuple) else out
    result.metrics["run_time_s"] = time.perf_counter() - t0
    results.append(result)
    print(f"{result.role:>16} seed {result.seed}: test acc {result.metrics['test_accuracy']:.4f}, "
          f"train {result.metrics['train_time_s']:.1f} s", flush=True)
    return out


def run(seeds: list[int], cache_dir: str, smoke: bool, seed0_teacher: bool) -> list[RunResult]:
    lab = config(LABELLED, cache_dir, smoke)
    tra = config(TRANSFER, cache_dir, smoke)
    data_lab, data_tra = load_run_data(lab, progress=False), load_run_data(tra, progress=False)
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="mnist1d_seeds_") as tmp:
        tracker = Tracker(uri=f"sqlite:///{tmp}/mlflow.db")
        teachers: dict[int, Teacher] = {}
        for seed in seeds:
            t_cfg = config(LABELLED, cache_dir, smoke, f"teachers.0.seed={seed}")
            teachers[seed] = timed(results, train_teacher, t_cfg.teachers[0], data_lab, t_cfg, RunContext(tracker, progress=False))[0]
            results[-1].metrics["train_samples"] = float(len(data_lab.train))
        for seed in seeds:
            teacher = teachers[seeds[0] if seed0_teacher else seed]
            timed(results, train_student, lab, data_lab, RunContext(None, progress=False), seed=seed)
            for role, cfg, data in (("distill", lab, data_lab), ("distill_transfer", tra, data_tra)):
                untracked = RunContext(None, role=role, progress=False, cache=TeacherLogitCache())  # in memory: nothing written to disk
                timed(results, train_student, cfg, data, untracked, seed=seed, teachers=[teacher])
    return results


def mean_std(values: list[float], digits: int) -> str:
    return format_mean_std(*stats.mean_std(values), digits=digits)


def report(results: list[RunResult], args: argparse.Namespace, total_s: float) -> str:
    cmd = "python benchmarks/mnist1d_seeds.py" + "".join(
        f" {flag}" for flag, on in (("--smoke", args.smoke), ("--seed0-teacher", args.seed0_teacher)) if on
    ) + ("" if args.seeds == [0, 1, 2] else " --seeds " + " ".join(map(str, args.seeds))) + (
        "" if args.threads == 1 else f" --threads {args.threads}")
    source = "the seed-0 teacher" if args.seed0_teacher else "its own seed's teacher (teachers.0.seed = student seed)"
    lines = [
        "# MNIST-1D defaults over seeds" + (" (SMOKE RUN: tiny budgets, numbers meaningless)" if args.smoke else ""),
        "",
        f"- command: `{cmd}`",
        f"- date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; total wall time {total_s / 60:.1f} min",
        f"- machine: {platform.machine()}, nproc {os.cpu_count()}, torch {torch.__version__}, "
        f"torch threads {torch.get_num_threads()}, Python {platform.python_version()}; CPU only, shared with other work",
        f"- seeds {', '.join(map(str, args.seeds))}; each distilled student learns from {source}",
        "- hyperparameters: the studies' YAML unchanged (no tuning on test); test split 1,000 samples, validation 400",
        "",
        "| model | runs | test accuracy (mean ± sd) | test errors /1000 | val accuracy | params | train s / run | published |",
        "|---|---:|---|---|---|---:|---:|---:|",
    ]
    for role, label, published in ROWS:
        rs = [r for r in results if r.role == role]
        if not rs:
            continue
        m = lambda k, rs=rs: [r.metrics[k] for r in rs]
        lines.append(
            f"| {label} | {len(rs)} | {mean_std(m('test_accuracy'), 4)} | {mean_std(m('test_errors'), 1)} "
            f"| {mean_std(m('val_accuracy'), 4)} | {int(m('params')[0]):,} | {statistics.fmean(m('train_time_s')):.1f} | {published} |"
        )
    lines += [
        "",
        "sd: sample standard deviation over seeds. Published: MNIST-1D paper (Greydanus & Kobak, ICML 2024), test accuracy. "
        "train s: fit()'s wall time; run s below adds building the teacher-logit cache, evaluation "
        "(incl. latency timing) and, for teachers, MLflow logging.",
        "",
        "| run | seed | test acc | test errors | val acc | train s | run s | train samples |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        mt = r.metrics
        lines.append(
            f"| {r.role} | {r.seed} | {mt['test_accuracy']:.4f} | {mt['test_errors']:.0f} | {mt['val_accuracy']:.4f} "
            f"| {mt['train_time_s']:.1f} | {mt['run_time_s']:.1f} | {mt['train_samples']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    ap.add_argument("--seed0-teacher", action="store_true", help="distil every seed from the seed-0 teacher")
    ap.add_argument("--smoke", action="store_true", help="tiny epoch budgets, to check the script (writes to /tmp unless --out)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a busy 2-core machine 2 threads ran the CNN ~15x slower)")
    ap.add_argument("--cache-dir", default=".cache", help="where MNIST-1D and the transfer set are generated/cached")
    ap.add_argument("--out", type=Path, default=None, help="markdown report (default benchmarks/results/mnist1d_seeds.md)")
    args = ap.parse_args(argv)
    out = args.out or (Path(tempfile.gettempdir()) / "mnist1d_seeds_smoke.md" if args.smoke else OUT)

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = run(args.seeds, args.cache_dir, args.smoke, args.seed0_teacher)
    text = report(results, args, time.perf_counter() - t0)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
