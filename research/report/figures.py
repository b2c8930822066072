"""Figures: made without pyplot (nothing leaks, and a notebook shows a returned figure
once), written to PNG files, and the axis names of the metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

AXIS_LABELS = {
    "size_bytes": "file size on disk (bytes)", "payload_bytes": "payload: tensors at stored precision (bytes)", "latency_b1_ms": "CPU latency, batch 1 (ms)", "latency_b256_ms": "CPU latency, batch 256 (ms)",
    "params": "parameters", "params_nonzero": "non-zero parameters", "test_accuracy": "test accuracy", "val_accuracy": "validation accuracy",
    "flops": "FLOPs",
}


def new_figure(w: float = 7.5, h: float = 5.0):
    """A ``matplotlib.figure.Figure`` of ``w`` x ``h`` inches with a constrained layout, unknown to pyplot."""
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), layout="constrained")


def figures_to_files(figures: dict[str, Any], out_dir: str | Path, *, dpi: int = 110) -> list[Path]:
    """Each figure as ``out_dir/<name>.png`` at ``dpi`` (the folder is made); the paths, in order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures.items():
        path = out / f"{name}.png"
        fig.savefig(path, dpi=dpi)
        paths.append(path)
    return paths


def axis_label(metric: str) -> str:
    """A metric's name on an axis, with its unit ("size on disk (bytes)"); unknown names as they are."""
    return AXIS_LABELS.get(metric, metric)
