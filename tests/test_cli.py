"""Bad input: one clear line naming the field, exit code 2, nothing written."""

import subprocess
import sys

import pytest

from research.cli import main

from .conftest import SHARED_DATA

GOOD = """
name: t
data: {dataset: mnist1d}
teachers:
  - model: {name: mnist1d_cnn}
student: {name: mnist1d_mlp}
distill: {temperature: 4, alpha: 0.1}
tracking: {experiment: cli_test}
"""



CASES = {
    "unknown top-level key": (GOOD + "epochz: 3\n", [], "epochz: unknown key"),
    "unknown nested key": (GOOD.replace("alpha: 0.1", "alpha: 0.1, temprature: 3"), [], "distill.temprature: unknown key"),
    "temperature zero": (GOOD, ["distill.temperature=0"], "distill.temperature"),
    "temperature negative": (GOOD.replace("temperature: 4", "temperature: -2"), [], "distill.temperature"),
    "alpha above one": (GOOD, ["distill.alpha=1.5"], "distill.alpha"),
    "alpha below zero": (GOOD, ["distill.alpha=-0.1"], "distill.alpha"),
    "negative teacher weight": (GOOD + "", ["distill.teacher_weights=[-1.0]"], "teacher_weights"),
    "all-zero teacher weights": (GOOD, ["distill.teacher_weights=[0.0]"], "teacher_weights"),
    "weights count": (GOOD, ["distill.teacher_weights=[0.5, 0.5]"], "teacher_weights"),
    "unknown model": (GOOD.replace("mnist1d_mlp", "resnet9000"), [], "unknown model 'resnet9000'"),
    "unknown model argument": (GOOD.replace("{name: mnist1d_mlp}", "{name: mlp, args: {widht: 3}}"), [], "widht"),
    "unknown dataset": (GOOD.replace("dataset: mnist1d", "dataset: imagenet"), [], "unknown dataset 'imagenet'"),
    "missing data files": (GOOD.replace("dataset: mnist1d", "dataset: mnist, root: nowhere").replace("mnist1d_", "hinton_").replace("hinton_cnn", "hinton_teacher").replace("hinton_mlp", "hinton_student"), [], "MNIST files missing"),
    "bad override syntax": (GOOD, ["distill.temperature"], "key=value"),
    "not yaml": ("a: [1, 2\n", [], "not valid YAML"),
}


@pytest.mark.parametrize("command", ["distill", "train-teacher"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, command, workdir, capsys):
    text, overrides, expected = CASES[case]
    cfg = workdir / "cfg.yaml"
    cfg.write_text(text)
    argv = [command, str(cfg), "--no-progress"] + [a for o in overrides for a in ("--set", o)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert expected in err, err
    assert err.startswith("research: error:")
    assert sorted(p.name for p in workdir.iterdir()) == ["cfg.yaml"]  # no mlruns/, no .cache/


def test_missing_config_file(workdir, capsys):
    assert main(["distill", "nope.yaml"]) == 2
    assert "config file not found: nope.yaml" in capsys.readouterr().err
    assert list(workdir.iterdir()) == []


def test_missing_files_message_names_folder_and_files(workdir, capsys):
    text, overrides, _ = CASES["missing data files"]
    (workdir / "cfg.yaml").write_text(text)
    assert main(["distill", "cfg.yaml"]) == 2
    err = capsys.readouterr().err
    assert "data.root" in err and str(workdir / "nowhere" / "MNIST" / "raw") in err and "train-images-idx3-ubyte" in err


def test_console_script_exit_code_and_help(workdir):
    (workdir / "cfg.yaml").write_text(GOOD)
    exe = [sys.executable, "-m", "research.cli"]
    bad = subprocess.run([*exe, "distill", "cfg.yaml", "--set", "distill.alpha=2"], capture_output=True, text=True)
    assert bad.returncode == 2 and "distill.alpha" in bad.stderr
    helped = subprocess.run([*exe, "distill", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--set KEY=VALUE" in helped.stdout and "--seeds" in helped.stdout
    assert sorted(p.name for p in workdir.iterdir()) == ["cfg.yaml"]


def test_shared_mnist_config_validates():
    """The real MNIST at ../shared/data satisfies the file check of a config."""
    from research.config import load_run_config

    cfg_text = GOOD.replace("dataset: mnist1d", f"dataset: mnist, root: {SHARED_DATA}")
    import pathlib
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = pathlib.Path(d) / "c.yaml"
        p.write_text(cfg_text.replace("mnist1d_cnn", "mnist_cnn_teacher").replace("mnist1d_mlp", "mnist_cnn_student"))
        cfg = load_run_config(p)
    assert cfg.data.dataset == "mnist"


# ---------------------------------------------------------------- research compare

COMPARE = """
name: cmpbad
data: {dataset: mnist1d}
teachers:
  - model: {name: mnist1d_cnn}
compare:
  budgets: [2]
  students:
    2: {name: mnist1d_cnn, args: {channels: 16}}
  methods:
    - {label: distill, kind: distill}
    - {label: int8, kind: compress, per_budget: false, compress: {method: quantize}}
"""

COMPARE_CASES = {
    "missing file": ("nope.yaml", [], "config file not found: nope.yaml"),
    "unknown key": ("cmp.yaml", ["compare.budgetz=[2]"], "compare.budgetz: unknown key"),
    "unknown top-level key": ("cmp.yaml", ["seedz=1"], "seedz: unknown key"),
    "bad compression method": ("cmp.yaml", ["compare.methods.1.compress.method=squeeze"], "compare.methods.1.compress.method"),
    "bad method kind": ("cmp.yaml", ["compare.methods.0.kind=distil"], "compare.methods.0.kind"),
    "bad backend": ("cmp.yaml", ["compare.methods.1.compress.backend=tflite"], "compare.methods.1.compress.backend"),
    "static torchao": ("cmp.yaml", ["compare.methods.1.compress.backend=torchao", "compare.methods.1.compress.quant_mode=static"],
                       "backend torchao has no static int8 path"),
    "duplicate labels": ("cmp.yaml", ["compare.methods.1.label=distill"], "labels must be unique"),
    "budget without a student": ("cmp.yaml", ["compare.budgets=[2, 4]"], "no student architecture for budget(s) [4.0]"),
    "budget below one": ("cmp.yaml", ["compare.budgets=[0.5]"], "budgets must be above 1"),
    "no teacher": ("cmp.yaml", ["teachers=[]"], "a comparison needs a teacher"),
    "bad --set syntax": ("cmp.yaml", ["compare.seeds"], "expected key=value"),
    "bad --set index": ("cmp.yaml", ["compare.methods.7.label=x"], "not a valid index"),
}


@pytest.mark.parametrize("case", sorted(COMPARE_CASES))
def test_compare_bad_input_exits_2_with_one_line_and_writes_nothing(case, workdir, capsys):
    path, overrides, expected = COMPARE_CASES[case]
    (workdir / "cmp.yaml").write_text(COMPARE)
    argv = ["compare", path, "--no-progress"] + [a for o in overrides for a in ("--set", o)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("research: error:"), err
    assert expected in err, err
    assert captured.out == ""
    assert sorted(p.name for p in workdir.iterdir()) == ["cmp.yaml"]  # no mlruns/, no reports/, no .cache/


def test_compare_good_file_passes_the_same_checks(workdir):
    """The base file of the cases above is valid, so each case fails for its own reason."""
    from research.config import load_compare_config

    (workdir / "cmp.yaml").write_text(COMPARE)
    cfg = load_compare_config(workdir / "cmp.yaml")
    assert [m.label for m in cfg.compare.methods] == ["distill", "int8"]
