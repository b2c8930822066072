#!/usr/bin/env python
"""Regenerate the README's figures from a real study, into docs/:

    docs/study_history.png           the objective trial by trial (Optuna's optimization history)
    docs/study_temperature_alpha.png the objective over temperature and alpha (from MLflow)
    docs/mlflow_ui.png               the study's trial runs in the MLflow UI (headless Chromium)

Usage, after `make demo` (or any study):

    .venv/bin/python scripts/readme_figures.py mnist1d_kd [--tracking-uri URI] [--storage URL] [--out docs]

The screenshot needs Chromium (`bash .ci/chromium.sh` installs it); the script starts
the MLflow UI on a free port itself and stops it, or uses a running one (--ui-url).
To show metric and parameter columns, it saves a shared view of the runs table on
the experiment (the tag `mlflow.sharedViewState.readme-figures`, what the UI's own
"Share" button writes) and opens the table through it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARE_KEY = "readme-figures"
# MLflow 3.17's UI opens its Assistant panel on the right for a local server; it is cut off.
ASSISTANT_PANEL_PX = 485
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
]


def find_chromium(explicit: str | None = None) -> str | None:
    """``explicit``, else $RESEARCH_CHROMIUM, else chromium / chromium-browser / google-chrome on PATH."""
    for name in (explicit, os.environ.get("RESEARCH_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium_capture(url: str, *, png: Path | None = None, window: tuple[int, int] = (1400, 900), budget_ms: int = 20000,
                     timeout_s: float = 180, chromium: str | None = None) -> str:
    """Load ``url`` in a fresh headless Chromium profile, let the page's scripts run for
    ``budget_ms`` of virtual time, save a screenshot to ``png`` and return the DOM."""
    binary = find_chromium(chromium)
    if binary is None:
        raise FileNotFoundError("chromium not found (bash .ci/chromium.sh installs it, or set RESEARCH_CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        cmd = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
               f"--virtual-time-budget={budget_ms}", "--dump-dom"]
        if png is not None:
            png.parent.mkdir(parents=True, exist_ok=True)
            cmd.append(f"--screenshot={png}")
        out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=timeout_s, cwd=profile)
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"chromium exited with {out.returncode} on {url}:\n{tail}")
    return out.stdout


def runs_view_url(base: str, experiment_id: str, *, search_filter: str | None = "tags.role = 'trial'",
                  order_by: str | None = "metrics.`val_accuracy`", share_key: str | None = None) -> str:
    """The experiment's runs table. Sorting by anything but the start time lists child
    runs (the trials) flat instead of folded under their study's parent run; a shared
    view (``share_key``) also sets the columns."""
    if share_key:
        query = {"viewStateShareKey": share_key}
    else:
        query = {k: v for k, v in (("searchFilter", search_filter), ("orderByKey", order_by), ("orderByAsc", "false" if order_by else None)) if v}
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}"


def save_shared_view(tracker, experiment_id: str, *, objective: str, columns: list[str], key: str = SHARE_KEY) -> str:
    """The runs table's view (filter, order, columns) as the experiment tag the UI's Share button writes."""
    state = {"searchFilter": "tags.role = 'trial'", "orderByKey": f"metrics.`{objective}`", "orderByAsc": False, "selectedColumns": columns}
    tracker.client.set_experiment_tag(experiment_id, f"mlflow.sharedViewState.{key}", json.dumps(state))
    return key


def crop_png(src: Path, dst: Path, *, right: int = 0, bottom: int = 0, width: int | None = None) -> Path:
    """Cut ``right``/``bottom`` pixels off and scale to ``width`` (Pillow, which matplotlib needs anyway)."""
    from PIL import Image

    with Image.open(src) as im:
        im = im.crop((0, 0, im.width - right, im.height - bottom))
        if width and im.width > width:
            im = im.resize((width, round(im.height * width / im.width)), Image.LANCZOS)
        im.save(dst, optimize=True)
    return dst


def study_plots(name: str, uri: str, storage: str | None, out: Path) -> tuple[list[Path], dict]:
    """The study's history (Optuna, when its storage is readable; else from MLflow) and T x alpha map."""
    from research import report, sweep

    info: dict = {"objective": "val_accuracy", "direction": "maximize", "experiment": name}
    figures = {}
    try:
        study, cfg = sweep.load_existing(name, sweep.storage_url(storage))
        info.update(objective=cfg.objectives[0].metric, direction=cfg.objectives[0].direction,
                    experiment=study.user_attrs.get(sweep.ATTR_EXPERIMENT, cfg.tracking.experiment))
        optuna_figs = sweep.study_figures(study, cfg)
        if "optimization_history" in optuna_figs:
            figures["study_history"] = optuna_figs["optimization_history"]
    except sweep.StudyError as e:
        print(f"readme_figures: {e}; the history comes from MLflow instead", file=sys.stderr)
    trials = report.trial_runs(info["experiment"], uri)
    if "study_history" not in figures:
        figures["study_history"] = report.plot_trial_history(trials, info["objective"], info["direction"])
    figures["study_temperature_alpha"] = report.plot_temperature_alpha(trials, info["objective"], info["direction"])
    for fig in figures.values():
        fig.set_size_inches(7, 4.6)
    info["columns"] = [f"metrics.`{info['objective']}`", "metrics.`test_accuracy`"] + [
        f"params.`{c}`" for c in ("distill.temperature", "distill.alpha") if c in trials
    ] + [f"params.`distill.teacher_weights.{k}`" for k in range(8) if f"weight_{k}" in trials] + ["tags.`enqueued`"]
    return report.figures_to_files(figures, out, dpi=100), info


def ui_screenshot(uri: str, experiment: str, info: dict, out: Path, *, ui_url: str | None, port: int | None, chromium: str | None) -> Path:
    from research.mlflow_servers import start_ui, stop_ui, wait_for_ui
    from research.tracking import Tracker

    tracker = Tracker(uri)
    exp_id = tracker.experiment_id(experiment, create=False)
    if exp_id is None:
        raise LookupError(f"no MLflow experiment {experiment!r} in {uri}")
    key = save_shared_view(tracker, exp_id, objective=info["objective"], columns=info["columns"])
    proc = None
    if ui_url is None:
        port = port or free_port()
        os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # no job runner: faster start, clean stop
        proc = start_ui(uri, "127.0.0.1", port)
        if not wait_for_ui(proc, "127.0.0.1", port, timeout_s=180):
            stop_ui(proc)
            raise RuntimeError(f"the MLflow UI did not start on 127.0.0.1:{port}")
        ui_url = f"http://127.0.0.1:{port}"
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "ui.png"
            dom = chromium_capture(runs_view_url(ui_url, exp_id, share_key=key), png=raw, window=(1900, 1000), chromium=chromium)
            if "trial-" not in dom:
                print("readme_figures: warning: no trial run in the page; the screenshot may show an empty table", file=sys.stderr)
            return crop_png(raw, out / "mlflow_ui.png", right=ASSISTANT_PANEL_PX, bottom=200, width=1100)
    finally:
        if proc is not None:
            stop_ui(proc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Regenerate the README's figures (docs/*.png) from a study.")
    p.add_argument("study", help="the study's name, e.g. mnist1d_kd")
    p.add_argument("--tracking-uri", help="MLflow store (default: the study's, else $MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    p.add_argument("--storage", help="Optuna storage (default: mlruns/optuna/journal.log)")
    p.add_argument("--out", default=str(ROOT / "docs"), help="folder for the PNGs (default: docs/)")
    p.add_argument("--no-screenshot", action="store_true", help="only the plots, no MLflow UI screenshot")
    p.add_argument("--ui-url", help="use this running MLflow UI instead of starting one")
    p.add_argument("--port", type=int, help="port for the MLflow UI the script starts (default: a free one)")
    p.add_argument("--chromium", help="the Chromium binary (default: $RESEARCH_CHROMIUM, else chromium on PATH)")
    args = p.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    from research import report, sweep

    uri = args.tracking_uri
    if uri is None:
        try:
            study, _ = sweep.load_existing(args.study, sweep.storage_url(args.storage))
            uri = study.user_attrs.get(sweep.ATTR_TRACKING_URI)
        except sweep.StudyError:
            pass
    uri = report.resolve_tracking_uri(uri)
    out = Path(args.out)
    paths, info = study_plots(args.study, uri, args.storage, out)
    if not args.no_screenshot:
        if find_chromium(args.chromium) is None:
            print("readme_figures: chromium not found; install it with `bash .ci/chromium.sh` or pass --no-screenshot", file=sys.stderr)
            return 1
        paths.append(ui_screenshot(uri, info["experiment"], info, out, ui_url=args.ui_url, port=args.port, chromium=args.chromium))
    for path in paths:
        print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
