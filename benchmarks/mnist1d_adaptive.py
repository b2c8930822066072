"""Adaptive temperature and teacher weighting on MNIST-1D: the issue-9 comparison.

Runs studies/mnist1d_adaptive.yaml (see that file for the methods, the budget
and how each choice is made on validation) with research.adaptive: one MLflow
parent run with a child run per (method, seed) in the experiment
``mnist1d_adaptive`` of the default store (teachers are reused from there on a
second run), the table and the chart in reports/mnist1d_adaptive/, copied to
benchmarks/results/mnist1d_adaptive/.

    nice python benchmarks/mnist1d_adaptive.py            # about 12 minutes on 2 cores
    python benchmarks/mnist1d_adaptive.py --smoke         # tiny budgets in a throw-away store, to check the script
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from research.adaptive import load_adaptive_config, run_adaptive  # noqa: E402

CONFIG = ROOT / "studies" / "mnist1d_adaptive.yaml"
SMOKE = [  # every budget shrunk: the numbers mean nothing
    "data.transfer_size=1000", "train.epochs=1", "teachers.0.train.epochs=1", "teachers.1.train.epochs=1", "teachers.2.train.epochs=1",
    "adaptive.seeds=[0, 1]", "adaptive.fixed_temperatures=[2, 8]", "adaptive.weight_points=2",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny budgets in a temporary MLflow store, results not copied")
    p.add_argument("--out", default=str(ROOT / "reports" / "mnist1d_adaptive"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    overrides = [*(SMOKE if args.smoke else []), *args.overrides]
    command = "python benchmarks/mnist1d_adaptive.py" + (" --smoke" if args.smoke else "") + "".join(f" --set {o}" for o in args.overrides)
    with tempfile.TemporaryDirectory(prefix="adaptive_smoke_") as tmp:
        if args.smoke:
            overrides += [f"tracking.uri=sqlite:///{tmp}/mlflow.db", f"data.cache_dir={tmp}/cache"]
        cfg = load_adaptive_config(CONFIG, overrides)
        table = run_adaptive(cfg, args.out, config_path=CONFIG, command=command)
    print(table.read_text())
    if not args.smoke:
        results = ROOT / "benchmarks" / "results" / "mnist1d_adaptive"
        results.mkdir(parents=True, exist_ok=True)
        for f in Path(args.out).iterdir():
            shutil.copy(f, results / f.name)
        print(f"copied to {results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
