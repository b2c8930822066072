"""MNIST-1D (Greydanus 2020), generated locally by the ``mnist1d`` package and cached as .npz.

The generation loop mirrors ``mnist1d.data.make_dataset`` draw for draw (a test checks equality)
but keeps the raw, unnormalised signals, because:
  * the transfer set must be standardised with the *training* statistics, not its own;
  * 50,000 samples take ~25 s, worth a progress bar;
  * make_dataset reseeds the global ``random``/``numpy`` RNGs; we restore them afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

FORMAT_VERSION = 1      # bump when the cached arrays change meaning
NUM_CLASSES = 10


def default_args() -> dict:
    """The package's default generation arguments (5,000 samples, 80/20 split, seed 42), minus its URL."""
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args.pop("url", None)  # download location, irrelevant to generation
    return args


def _key(args: dict) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, **args}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def generate_raw(args: dict, show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalised (x [N, L] float64, y [N] int64), the same draws as mnist1d's make_dataset."""
    from mnist1d.data import get_templates
    from mnist1d.transform import transform
    from mnist1d.utils import ObjectView

    templates = get_templates()
    labels = templates["y"]
    per_class = args["num_samples"] // len(labels)
    ns = ObjectView(dict(args))
    saved = random.getstate(), np.random.get_state()
    try:
        random.seed(args["seed"])          # mnist1d.utils.set_seed
        np.random.seed(args["seed"])
        xs = np.empty((per_class * len(labels), args["final_seq_length"]))
        with tqdm(total=len(xs), desc=f"MNIST-1D seed {args['seed']}", disable=not show_progress,
                  unit="sample") as bar:
            for c in range(len(labels)):
                for i in range(per_class):
                    xs[c * per_class + i], _ = transform(templates["x"][c], templates["t"], ns)
                    bar.update()
        ys = np.repeat(labels, per_class).astype(np.int64)
        perm = np.random.permutation(len(ys))
        xs, ys = xs[perm], ys[perm]
        if args["shuffle_seq"]:
            xs = xs[..., np.random.permutation(args["final_seq_length"])]
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
    return xs, ys


def _save_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write to a temp file in the same folder, then rename: an interrupted run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; a cache may be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _load_cached(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the file is absent or unreadable (then we regenerate)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            return {k: f[k] for k in keys}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def load_mnist1d(cache_dir: str | Path, show_progress: bool = False) -> dict[str, np.ndarray]:
    """Standard MNIST-1D: x, y (4,000), x_test, y_test (1,000), and the raw mean/std used to standardise.

    Standardisation is make_dataset's: over all generated samples, one scalar mean and std.
    """
    args = default_args()
    path = Path(cache_dir) / "mnist1d" / f"standard-{_key(args)}.npz"
    keys = ("x", "y", "x_test", "y_test", "mean", "std")
    data = _load_cached(path, keys)
    if data is None:
        raw, y = generate_raw(args, show_progress)
        mean, std = raw.mean(), raw.std()
        x = (raw - mean) / std
        cut = int(len(y) * args["train_split"])
        data = {"x": x[:cut], "y": y[:cut], "x_test": x[cut:], "y_test": y[cut:],
                "mean": np.asarray(mean), "std": np.asarray(std)}
        _save_atomic(path, data)
    return data


def load_mnist1d_transfer(cache_dir: str | Path, size: int, seed: int, mean: float, std: float,
                          show_progress: bool = False) -> np.ndarray:
    """``size`` extra unlabeled inputs from the same generator with another seed, standardised
    with the training statistics (mean, std) so they live on the inputs' scale."""
    args = default_args()
    if seed == args["seed"]:
        raise ValueError(f"transfer_seed must differ from the MNIST-1D generation seed {args['seed']}, "
                         "or the transfer set would repeat training samples")
    # The generator makes num_samples // 10 per class: round up to a multiple of 10, then slice
    # (the rows are already shuffled, so the slice is a random subset).
    n_gen = -(-size // NUM_CLASSES) * NUM_CLASSES
    args.update(num_samples=n_gen, train_split=1.0, seed=seed)
    path = Path(cache_dir) / "mnist1d" / f"transfer-{_key(args)}.npz"
    data = _load_cached(path, ("x_raw",))
    if data is None:
        data = {"x_raw": generate_raw(args, show_progress)[0]}
        _save_atomic(path, data)
    return (data["x_raw"][:size] - mean) / std
