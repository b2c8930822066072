"""Studies at the speed of the hardware (issue 11): a hand-written Optuna + MLflow loop, the study one
trial at a time and populations of K stacked students, each with 1 and 2 workers, measured in ONE run
on the same machine with the same per-trial budget; the compute ceiling of a core; a profile.

    python benchmarks/study_speed.py [--trials 20] [--epochs 20] [--transfer 50000] [--teacher-epochs 20]
        [--populations 4 8 16 32] [--workers 1 2] [--note "shared machine: ..."] [--workdir DIR] [--out FILE]
    python benchmarks/study_speed.py --smoke      # tiny budget, about 3 minutes; writes to a temporary file

Budget: ``studies/mnist1d_kd.yaml`` (TPE over temperature and alpha, its two enqueued defaults first),
``--trials`` trials of ``--epochs`` epochs over train + transfer (3,600 + ``--transfer`` samples: 53,600 by
default, as the issue), pruning off (``--pruner``; the hand-written loop does not prune). Everything runs in
one fresh folder (its own mlruns/): a 1-trial warm-up study trains the teacher (``--teacher-epochs``) and fills
the data and teacher-logit caches; every study and the hand-written loop then reuse that teacher.
Trials per hour are over the trial phase (first trial's start to last trial's end, Optuna's timestamps).
Writes benchmarks/results/study_speed.md (``--out``).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import pstats
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from study_throughput import trial_phase  # the same measure as the other study benchmarks (run from benchmarks/)

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "studies" / "mnist1d_kd.yaml"
RESULTS = REPO / "benchmarks" / "results" / "study_speed.md"


def research(args: list[str], cwd: Path, profile: Path | None = None) -> float:
    """Run the research CLI (one torch thread per process); its wall time, s."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    prof = ["-m", "cProfile", "-o", str(profile)] if profile else []
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *prof, "-m", "research.cli", *args], cwd=cwd, check=True, env=env)
    return time.perf_counter() - t0


# ---------------------------------------------------------------- the hand-written loop (the baseline)


def kd_loss(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, temperature: float, alpha: float) -> torch.Tensor:
    """alpha * CE over labelled rows (y >= 0) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T)), batchmean."""
    labelled = y >= 0
    hard = F.cross_entropy(s[labelled], y[labelled]) if labelled.any() else s.sum() * 0
    soft = F.kl_div(F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1), reduction="batchmean", log_target=True)
    return alpha * hard + (1 - alpha) * temperature**2 * soft


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def handwritten_loop(cfg, work: Path, n_trials: int):
    """One trial at a time: TPE over the study file's temperature and alpha, a plain torch loop with the
    teacher's forward on every batch, synchronous MLflow (params, per-epoch metrics) to a SQLite store.
    Data and teacher come from the project's own functions (the teacher the warm-up study trained)."""
    import mlflow
    import optuna

    from research.models import build_model
    from research.pipeline import load_run_data, obtain_teachers
    from research.tracking import Tracker

    data = load_run_data(cfg, progress=False)
    teachers = obtain_teachers(cfg, data, Tracker(f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"), progress=False)
    assert teachers[0].reused, "the warm-up study should have trained the teacher"
    teacher = teachers[0].model.eval().requires_grad_(False)
    x = torch.cat([data.train.x, data.transfer.x]) if data.transfer is not None else data.train.x
    y = torch.cat([data.train.y, data.transfer.y]) if data.transfer is not None else data.train.y
    tc, space = cfg.train, cfg.search
    mlflow.set_tracking_uri(f"sqlite:///{work / 'handwritten.db'}")
    mlflow.set_experiment("handwritten")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=cfg.sampler.seed))
    for point in cfg.enqueue:
        study.enqueue_trial(point)

    def objective(trial: optuna.Trial) -> float:
        temperature = trial.suggest_float("temperature", space.temperature.low, space.temperature.high, log=space.temperature.log)
        alpha = trial.suggest_float("alpha", space.alpha.low, space.alpha.high, log=space.alpha.log)
        t0 = time.perf_counter()
        mlflow.start_run(run_name=f"trial-{trial.number:03d}")
        mlflow.log_params({"temperature": temperature, "alpha": alpha, "epochs": tc.epochs, "lr": tc.lr, "batch_size": tc.batch_size})
        spent = time.perf_counter() - t0
        torch.manual_seed(cfg.seed)
        student = build_model(cfg.student.name, input_shape=data.input_shape, num_classes=data.num_classes, **cfg.student.args)
        opt = torch.optim.Adam(student.parameters(), lr=tc.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=tc.epochs)
        gen = torch.Generator().manual_seed(cfg.seed)
        for epoch in range(1, tc.epochs + 1):
            student.train()
            total = 0.0
            for idx in torch.randperm(len(x), generator=gen).split(tc.batch_size):
                xb, yb = x[idx], y[idx]
                with torch.no_grad():
                    t = teacher(xb)
                loss = kd_loss(student(xb), t, yb, temperature, alpha)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
            sched.step()
            val = accuracy(student, data.val.x, data.val.y)
            t0 = time.perf_counter()
            mlflow.log_metrics({"train_loss": total / len(x), "val_accuracy": val}, step=epoch)
            spent += time.perf_counter() - t0
        test = accuracy(student, data.test.x, data.test.y)
        t0 = time.perf_counter()
        mlflow.log_metrics({"final_val_accuracy": val, "test_accuracy": test})
        mlflow.end_run()
        trial.set_user_attr("tracking_time_s", spent + time.perf_counter() - t0)
        return val

    study.optimize(objective, n_trials=n_trials)
    return study, data


# ---------------------------------------------------------------- compute: the FLOPs a trial needs, what a core sustains


def trial_flops(cfg, data, steps: int) -> tuple[int, list[tuple[int, int]]]:
    """FLOPs of one trial: one training step of the student (forward, KD loss, backward) at the batch
    size, counted by FlopCounterMode (matrix products only), times ``steps``; and the student's
    Linear shapes (in, out). The teacher is not counted (the study caches its logits)."""
    from torch.utils.flop_counter import FlopCounterMode

    from research.models import build_model

    student = build_model(cfg.student.name, input_shape=data.input_shape, num_classes=data.num_classes, **cfg.student.args)
    b = cfg.train.batch_size
    xb, tb, yb = data.train.x[:b], torch.randn(b, data.num_classes), data.train.y[:b]
    with FlopCounterMode(display=False) as counter:
        kd_loss(student(xb), tb, yb, 4.0, 0.5).backward()
    layers = [(m.in_features, m.out_features) for m in student.modules() if isinstance(m, torch.nn.Linear)]
    return counter.get_total_flops() * steps, layers


def gemm_ceiling(layers: list[tuple[int, int]], batch: int, k: int, seconds: float) -> float:
    """GFLOP/s of ONE thread in a plain loop of the student's GEMMs (per layer: forward x@W, weight
    gradient dY^T@x, input gradient dY@W except the first layer's, as autograd does); k > 1: each as a
    stacked bmm over k members."""
    torch.set_num_threads(1)
    shapes = []
    for i, (fin, fout) in enumerate(layers):
        shapes += [((batch, fin), (fin, fout)), ((fout, batch), (batch, fin))] + ([((batch, fout), (fout, fin))] if i else [])
    lead = (k,) if k > 1 else ()
    mats = [(torch.randn(*lead, *a), torch.randn(*lead, *b_)) for a, b_ in shapes]
    flops = sum(2 * k * a[0] * a[1] * b_[1] for a, b_ in shapes)
    op = torch.bmm if k > 1 else torch.mm
    for a, b_ in mats * 20:  # warm-up
        op(a, b_)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for a, b_ in mats:
            op(a, b_)
        reps += 1
    return flops * reps / (time.perf_counter() - t0) / 1e9


# ---------------------------------------------------------------- the profile


def profile_tables(path: Path, top: int = 15) -> list[str]:
    """Where the time of a profiled study goes: categories from cProfile's caller edges (a category's
    time = the cumulative time of calls into its functions from outside them, so nothing counts twice
    within a category), and the top ``top`` cumulative entries of the research/ package."""
    st = pstats.Stats(str(path))
    stats, total = st.stats, st.total_tt

    def fn(*names: str, file: str = "/research/"):
        return lambda key: file in key[0] and (not names or key[2] in names)

    def into(pred, caller=lambda c: True) -> float:  # cumulative time of calls into pred's functions from outside them
        return sum(edge[3] for f, (*_, callers) in stats.items() if pred(f) for c, edge in callers.items() if not pred(c) and caller(c))

    loops = fn("fit", "fit_population")
    in_loops = into(loops)
    validation = into(fn("epoch_metrics"), caller=loops)
    callbacks = sum(into(lambda k, f=f: k == f, caller=loops) for f in stats if "/research/" in f[0]
                    and ("/sweep/" in f[0] or f[0].endswith("pipeline.py")))  # per-epoch MLflow logging, pruning
    finishing = lambda c: "/research/sweep/results.py" in c[0]  # noqa: E731 - after the trials: best models, summary
    trial_files = ("/research/sweep/population.py", "/research/sweep/objective.py", "/research/pipeline.py", "/research/runs.py")
    setup = fn("obtain_teachers", "check_models", "_load_model_uri")  # their MLflow lookups count as data and teacher
    parts = [
        ("training step (fit / fit_population less validation and epoch callbacks)", in_loops - validation - callbacks),
        ("validation each epoch (epoch_metrics in the training loops)", validation),
        ("final evaluation (evaluate_run: val, test, size, latency, FLOPs)", into(fn("evaluate_run"))),
        ("MLflow in the trials (calls into research/tracking.py from the trials' code)",
         into(fn(file="research/tracking.py"), caller=lambda c: any(f in c[0] for f in trial_files) and not setup(c))),
        ("MLflow set-up (store, experiment, the study's parent run)", into(fn(file="research/tracking.py"), caller=lambda c: not (
            finishing(c) or setup(c) or any(f in c[0] for f in trial_files)))),
        ("Optuna (calls from research/ into optuna: ask, tell, report, user attributes)",
         into(fn(file="/optuna/"), caller=lambda c: "/research/" in c[0] and not finishing(c)) - into(fn("optimize", file="/optuna/"))),
        ("data and teacher (load_run_data, obtain_teachers, check_models, teacher logit cache)",
         into(lambda k: setup(k) or fn("load_run_data", "logits")(k))),
        ("torch.use_deterministic_algorithms (seed_everything; its first call in a process imports)",
         into(fn("use_deterministic_algorithms", file="/torch/"))),
        ("study finish (finish_study: the best trials' models to MLflow, the parent run's summary)", into(fn("finish_study"))),
    ]
    parts.append(("other (interpreter start-up, imports, ...)", total - sum(s for _, s in parts)))
    lines = ["| part | s | share |", "|---|---:|---:|"]
    lines += [f"| {name} | {s:.1f} | {100 * s / total:.1f} % |" for name, s in parts]
    lines += [f"| whole command (profiled) | {total:.1f} | 100 % |", f"| of which the trials (launch: rounds, logging, evaluation) | "
              f"{into(fn('launch')):.1f} | {100 * into(fn('launch')) / total:.1f} % |", "", f"Top {top} cumulative entries of the research/ package:", "",
              "| calls | own s | cumulative s | function |", "|---:|---:|---:|---|"]
    own = sorted((v[3], k, v) for k, v in stats.items() if "/research/" in k[0] and k[2] != "<module>")[::-1][:top]
    for ct, (file, line, name), (_, nc, tt, *_rest) in own:
        lines.append(f"| {nc} | {tt:.2f} | {ct:.2f} | `{file.split('/research/')[-1]}:{line}({name})` |")
    return lines


# ---------------------------------------------------------------- the run


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")), "")
    return f"{platform.machine()} {cpu}, nproc {os.cpu_count()}, Python {platform.python_version()}, torch {torch.__version__}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--epochs", type=int, default=20, help="student epochs per trial")
    p.add_argument("--transfer", type=int, default=50000, help="data.transfer_size (train 3,600 + transfer)")
    p.add_argument("--teacher-epochs", type=int, default=20)
    p.add_argument("--populations", type=int, nargs="+", default=[4, 8, 16, 32])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--pruner", choices=["none", "median"], default="none")
    p.add_argument("--profile-k", type=int, default=16, help="population of the profiled 1-worker study (0: no profile)")
    p.add_argument("--ceiling-s", type=float, default=3.0, help="seconds per ceiling measurement")
    p.add_argument("--note", help="a line for the results, e.g. 'measured on a shared machine (...)'")
    p.add_argument("--smoke", action="store_true", help="tiny budget: 4 trials, 1 epoch, transfer 2000, K in {1, 4}")
    p.add_argument("--workdir", type=Path, help="folder to run in (default: a new temporary one)")
    p.add_argument("--out", type=Path, help=f"results file (default {RESULTS.relative_to(REPO)}; --smoke: a temporary file)")
    a = p.parse_args()
    sys.path.insert(0, str(REPO))  # this checkout's research package, as the CLI subprocesses get it (PYTHONPATH)
    if a.smoke:
        a.trials, a.epochs, a.transfer, a.teacher_epochs, a.populations, a.profile_k, a.ceiling_s = 4, 1, 2000, 2, [4], 4, 0.5
    work = (a.workdir or Path(tempfile.mkdtemp(prefix="study_speed_"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = a.out or (work / "study_speed.md" if a.smoke else RESULTS)
    torch.set_num_threads(1)

    import optuna

    from research.config import load_study_config
    from research.stats import state_counts

    sets = [f"train.epochs={a.epochs}", f"teachers.0.train.epochs={a.teacher_epochs}", f"data.transfer_size={a.transfer}",
            f"pruner.name={a.pruner}", "tracking.experiment=study_speed"]
    common = [x for s in sets for x in ("--set", s)] + ["--no-progress"]
    study_args = ["study", "run", str(STUDY), *common]
    walls: dict[str, float] = {}
    walls["warm-up"] = research([*study_args, "--set", "name=warmup", "--set", "train.epochs=1", "--n-trials", "1"], work)
    os.chdir(work)  # the study file's relative paths (data cache) resolve in the work folder, as for the CLI
    cfg = load_study_config(STUDY, sets)
    t0 = time.perf_counter()
    loop, data = handwritten_loop(cfg, work, a.trials)
    walls["loop"] = time.perf_counter() - t0
    runs = [(k, w) for k in [1, *a.populations] for w in a.workers]
    for k, w in runs:
        walls[f"k{k}_w{w}"] = research([*study_args, "--set", f"name=speed_k{k}_w{w}", "--n-trials", str(a.trials),
                                        "--population", str(k), "--workers", str(w)], work)
    prof = work / "study.prof"
    if a.profile_k:
        walls["profile"] = research([*study_args, "--set", "name=profiled", "--n-trials", str(a.profile_k),
                                     "--population", str(a.profile_k)], work, profile=prof)

    steps = a.epochs * math.ceil((len(data.train) + (len(data.transfer) if data.transfer is not None else 0)) / cfg.train.batch_size)
    flops, layers = trial_flops(cfg, data, steps)
    ceilings = {k: gemm_ceiling(layers, cfg.train.batch_size, k, a.ceiling_s) for k in (1, 16)}
    ceiling = max(ceilings.values())

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(work / "mlruns" / "optuna" / "journal.log")))
    rows, base = [], {}
    for label, w, study in [("hand-written loop", 1, loop)] + [
            (f"study, K = {k}" if k > 1 else "study, one at a time", w, optuna.load_study(study_name=f"speed_k{k}_w{w}", storage=storage))
            for k, w in runs]:
        phase, done = trial_phase(study)
        counts = state_counts(t.state for t in done)
        complete = [t for t in done if t.state.name == "COMPLETE"]
        per_hour = 3600 * len(done) / phase
        best = max((t.value for t in complete), default=float("nan"))
        base.setdefault(label, (per_hour, best))  # the first row of each label: loop, and the study with 1 worker
        loop_h, loop_best = base["hand-written loop"]
        study_h = base.get("study, one at a time", (per_hour, best))[0]
        # each worker logs its trials one after the other (a population's members too, after their
        # round), so the share of the workers' time: summed logging time over trial phase x workers
        mlflow_share = sum(t.user_attrs.get("tracking_time_s") or 0.0 for t in done) / max(1e-9, phase * w)
        epochs_run = sum(1.0 if t.state.name == "COMPLETE" else len(t.intermediate_values) / a.epochs for t in done)
        cores = 1 if w == 1 else w * max(1, (os.cpu_count() or 1) // w)  # torch threads in use, as research.sweep.study.launch sets them
        achieved = flops * epochs_run / (phase * cores) / 1e9
        rows.append(f"| {label} | {w} | {len(done)} | {counts['COMPLETE']} / {counts['PRUNED']} / {counts['FAIL']} | {phase:.1f} | "
                    f"{per_hour:.0f} | {per_hour / loop_h:.2f}x | {per_hour / study_h:.2f}x | {best:.4f} | {best - loop_best:+.4f} | "
                    f"{100 * mlflow_share:.1f} % | {achieved:.2f} | {100 * achieved / ceiling:.0f} % |")

    cmd = shlex.join(["python", "benchmarks/study_speed.py", *sys.argv[1:]])
    lines = [
        "# Studies at the speed of the hardware (issue 11)", "",
        f"- command: `{cmd}`; date {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {machine()}",
        f"- budget: `studies/mnist1d_kd.yaml`, {a.trials} trials of {a.epochs} epochs over {len(data.train)} + "
        f"{len(data.transfer) if data.transfer is not None else 0} samples (batch {cfg.train.batch_size}, {steps} steps a trial), "
        f"TPE, pruner {a.pruner}; teacher {a.teacher_epochs} epochs, trained once by a warm-up study and reused by all",
        *([f"- note: {a.note}"] if a.note else []),
        *(["- SMOKE budget: the figures show that the benchmark runs, not how fast the study is"] if a.smoke else []),
        "",
        "| run | workers | trials | complete / pruned / failed | trial phase, s | trials per hour | vs loop | vs study one at a time | "
        "best val accuracy | vs loop | MLflow share of trial time | GFLOP/s per busy core | of the ceiling |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *rows, "",
        "Trial phase: first trial's start to last trial's end (Optuna timestamps): start-up, data and the teacher are left out. "
        "The hand-written loop (in this file) runs the teacher's forward on every batch and logs to MLflow synchronously; "
        "MLflow share: the trials' time in MLflow calls (the loop's own timed calls; the study's `tracking_time_s`, "
        "run creation included) over trial phase x workers, since a worker logs its trials one after the other, a "
        "population's members too, after their round. Ratios are against the loop's and the 1-worker "
        "one-at-a-time study's trials per hour of this same run.", "",
        "## The compute ceiling", "",
        f"- FLOPs of one trial: {flops / 1e9:.2f} GFLOP = {steps} steps x {flops / steps / 1e6:.2f} MFLOP, one training step of the "
        f"student (forward, KD loss, backward at batch {cfg.train.batch_size}; FlopCounterMode counts the matrix products: "
        f"Linear layers {layers}). Not counted: the teacher (the study caches its logits), validation, the optimizer, elementwise ops.",
        f"- one core (torch.set_num_threads(1)), a plain loop of the same GEMMs (forward, weight and input gradients): "
        f"{ceilings[1]:.2f} GFLOP/s as torch.mm (K = 1), {ceilings[16]:.2f} GFLOP/s as stacked bmm [16, B, in] x [16, in, out]; "
        f"the ceiling is the higher, {ceiling:.2f} GFLOP/s.",
        "- achieved per busy core: trial FLOPs x trials (pruned ones by their epochs) / (trial phase x busy cores); busy cores: 1 "
        "for 1 worker (the study file's one thread), else workers x (nproc // workers) torch threads (launch's split).", "",
        "Wall of each command, s: " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items()), "",
    ]
    if a.profile_k:
        lines += [f"## Where the time goes: cProfile of one 1-worker study, K = {a.profile_k} "
                  f"(`python -m cProfile -o study.prof -m research.cli study run ... --population {a.profile_k}`)", "",
                  *profile_tables(prof), "",
                  "Categories from cProfile's caller edges (cumulative time of calls into them from outside them, as seen from "
                  "the direct caller); MLflow includes its per-epoch logging inside the training loops, which the training step "
                  "line leaves out. "
                  "Profiling slows Python-heavy parts more than torch kernels."]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out}; runs in {work}")


if __name__ == "__main__":
    main()
