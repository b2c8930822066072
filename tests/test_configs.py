"""Every file shipped in studies/ loads and validates with the loader of the command that reads it,
and what it names can be built: the README's commands work on them as they are."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from research.adaptive import load_adaptive_config
from research.config import load_compare_config, load_run_config, load_study_config
from research.models import build_model
from research.reproduce import load_setting

from .conftest import REPO

STUDY_FILES = sorted((REPO / "studies").rglob("*.yaml"))  # subfolders too (studies/cifar100/)
# Keys that only a study file has (research/config/study.py StudyConfig), and the comparison's own section.
STUDY_KEYS = {"search", "sampler", "pruner", "objectives", "n_trials", "timeout_s", "storage", "enqueue", "keep_models"}
# Input shapes written out by hand (MNIST-1D: 40 points; MNIST: 1 x 28 x 28 images).
INPUT_SHAPES = {"mnist1d": (40,), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32),
                "cmudict": (28,)}  # CMUdict: letter ids, the longest word has 28 letters


def kind_of(path: Path) -> str:
    """Which command reads the file: `research compare`, `research study run`, `research distill`,
    or the adaptive comparison (benchmarks/mnist1d_adaptive.py, research.adaptive)."""
    raw = yaml.safe_load(path.read_text())
    if "compare" in raw:
        return "compare"
    if "adaptive" in raw:
        return "adaptive"
    if "reproduce" in raw:
        return "reproduce"
    return "study" if STUDY_KEYS & set(raw) else "run"


LOADERS = {"compare": load_compare_config, "study": load_study_config, "run": load_run_config, "adaptive": load_adaptive_config,
           "reproduce": lambda path: load_setting(str(path))}


def test_studies_folder_has_each_kind_and_the_readme_names_every_file():
    kinds = {p.relative_to(REPO / "studies").as_posix(): kind_of(p) for p in STUDY_FILES}
    assert set(kinds.values()) == {"compare", "study", "run", "adaptive", "reproduce"}, kinds
    assert {"mnist1d_kd.yaml", "mnist1d_distill.yaml", "mnist1d_compare.yaml"} <= set(kinds)  # the ones `make demo` and the README use
    readme = (REPO / "README.md").read_text()
    assert [n for n in kinds if n not in readme] == []


def _forward_ok(spec, shape) -> int:
    """Build the model for ``shape``, run a batch of 2, return its parameter count."""
    model = build_model(spec.name, input_shape=shape, num_classes=10, **spec.args).eval()
    with torch.no_grad():
        if spec.name == "transformer_seq2seq":  # token ids in; the first output step's scores out
            assert model(torch.full((2, *shape), 3)).shape == (2, 1, 10)
        else:
            assert model(torch.zeros(2, *shape)).shape == (2, 10)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("path", STUDY_FILES, ids=[p.relative_to(REPO / "studies").as_posix() for p in STUDY_FILES])
def test_shipped_file_loads_validates_and_builds(path, monkeypatch):
    monkeypatch.chdir(REPO)  # data roots such as ../shared/data are relative to the repository root, where the README runs them
    kind = kind_of(path)
    cfg = LOADERS[kind](path.relative_to(REPO))  # with the data-file check, as the CLI loads it
    shape = INPUT_SHAPES[cfg.data.dataset]
    teacher_params = [_forward_ok(t.model, shape) for t in cfg.teachers if t.model is not None]
    assert teacher_params, "every shipped file trains its teacher"
    if cfg.student is not None:
        _forward_ok(cfg.student, shape)

    if kind == "study":
        assert cfg.searched_names(), "a study searches something"
        # Enqueued points lie inside the search ranges (a point outside is silently clipped or refused).
        for point in cfg.enqueue:
            for name, value in point.items():
                space = getattr(cfg.search, name, None)
                if space is not None and hasattr(space, "low"):
                    assert space.low <= value <= space.high, (name, value, space)
        assert all(not o.metric.startswith("test_") for o in cfg.objectives)
    elif kind == "compare":
        assert cfg.compare.methods and cfg.compare.seeds
        # Each budget's student has about teacher / budget parameters (the files promise 2x, 4x, 8x fewer).
        for budget in cfg.compare.budgets:
            student = _forward_ok(cfg.compare.students[budget], shape)
            target = teacher_params[0] / budget
            assert 0.85 * target <= student <= 1.15 * target, (path.name, budget, student, target)
    elif kind == "adaptive":
        spec = cfg.adaptive
        assert spec.select_seed in spec.seeds and spec.fixed_temperatures and len(cfg.teachers) >= 2
        # every method's settings build a distiller (kinds and knobs as the file names them)
        from research.adaptive import _distill
        from research.distill import build_distiller

        student = torch.nn.Linear(4, 10)
        for m in spec.temperature_methods:
            for c in m.candidates:
                build_distiller(student, [torch.nn.Linear(4, 10)], _distill(cfg.distill, c))
        for m in spec.teacher_methods:
            build_distiller(student, [torch.nn.Linear(4, 10) for _ in cfg.teachers], _distill(cfg.distill, m.distill))
    elif kind == "reproduce":  # `research reproduce NAME`: the --full budget loads too
        assert cfg.student is not None and load_setting(str(path.relative_to(REPO)), full=True).student == cfg.student
    else:
        assert cfg.student is not None and kind == "run"


NOT_RUN_FILES = [p for p in STUDY_FILES if kind_of(p) != "run"]


@pytest.mark.parametrize("path", NOT_RUN_FILES, ids=[p.relative_to(REPO / "studies").as_posix() for p in NOT_RUN_FILES])
def test_study_and_compare_files_are_refused_as_run_files(path, monkeypatch):
    """The kinds really differ: `research distill` on a study or comparison file names the unknown key."""
    from research.config import ConfigError

    monkeypatch.chdir(REPO)
    key = {"compare": "compare", "adaptive": "adaptive", "reproduce": "reproduce"}.get(kind_of(path), "|".join(sorted(STUDY_KEYS)))
    with pytest.raises(ConfigError, match=f"({key}): unknown key"):
        load_run_config(path.relative_to(REPO))
