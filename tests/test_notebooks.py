"""The analysis notebooks, run headless against a tiny real study, and the report
functions they are made of.

The study: three small teachers, temperature, alpha and the teachers' weights
searched (3 trials), finalized with 2 seeds; and a tiny `research compare` (teacher,
student, distill, prune and int8 runs) for the comparison notebook.
Each notebook runs in a fresh kernel of this interpreter, with its parameters cell
rewritten, and fails on any cell error.
"""

import re
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from research import report
from research.cli import main

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAME = "nbstudy"

TEACHERS = """
teachers:
  - model: {{name: mlp, args: {{widths: [32]}}}}
    seed: 0
    train: {{epochs: 2, batch_size: 500}}
  - model: {{name: mlp, args: {{widths: [24]}}}}
    seed: 1
    train: {{epochs: 2, batch_size: 500}}
  - model: {{name: mlp, args: {{widths: [16]}}}}
    seed: 2
    train: {{epochs: 2, batch_size: 500}}
student: {{name: mnist1d_mlp}}
train: {{epochs: 2, batch_size: 500}}
eval: {{latency_repeats: 1}}
data: {{dataset: mnist1d, cache_dir: {cache}}}
seed: 0
"""

STUDY = """
name: {name}
""" + TEACHERS + """
search:
  temperature: {{low: 1.0, high: 20.0, log: true}}
  alpha: {{low: 0.0, high: 1.0}}
  teacher_weights: true
enqueue:
  - {{temperature: 4.0, alpha: 0.1}}
sampler: {{name: random, seed: 0}}
pruner: {{name: none}}
n_trials: 3
keep_models: 0
"""

COMPARE = """
name: {name}_compare
seed: 0
data: {{dataset: mnist1d, cache_dir: {cache}}}
teachers:
  - model: {{name: mnist1d_cnn}}
    train: {{epochs: 1, batch_size: 500}}
train: {{epochs: 1, batch_size: 500}}
eval: {{latency_repeats: 1}}
compare:
  budgets: [2]
  students: {{2: {{name: mnist1d_cnn, args: {{channels: 16}}}}}}
  seeds: [0]
  methods:
    - {{label: distill, kind: distill}}
    - {{label: student, kind: student}}
    - {{label: prune, kind: compress, compress: {{method: prune, finetune_epochs: 1}}}}
    - {{label: int8, kind: compress, per_budget: false, compress: {{method: quantize, backend: onnxruntime}}}}
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    work = tmp_path_factory.mktemp("nbstudy")
    mp = pytest.MonkeyPatch()
    mp.chdir(work)
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    (work / "study.yaml").write_text(STUDY.format(name=NAME, cache=work / ".cache"))
    (work / "compare.yaml").write_text(COMPARE.format(name=NAME, cache=work / ".cache"))
    assert main(["study", "run", "study.yaml", "--no-progress"]) == 0
    assert main(["study", "finalize", NAME, "--seeds", "2", "--no-progress"]) == 0
    assert main(["compare", "compare.yaml", "--out", str(work / "compare"), "--no-progress"]) == 0
    yield work, f"sqlite:///{work / 'mlruns' / 'mlflow.db'}"
    mp.undo()


# ----------------------------------------------------------------------------- the notebooks, headless


def parameters_cell(nb):
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    return cells[0]


def run_notebook(name: str, params: dict, cwd: Path, out_dir: Path):
    """Execute a notebook like papermill does: the parameters cell keeps its defaults and
    gets the given values appended; a cell error raises CellExecutionError."""
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    cell = parameters_cell(nb)
    cell.source += "\n# injected by the test\n" + "\n".join(f"{k} = {v!r}" for k, v in params.items())
    nb.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.prefix)"))
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, out_dir / name)  # executed copy, for a look when it fails
    return nb


def outputs(nb, kind: str) -> list:
    found = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            if kind == "png" and "image/png" in o.get("data", {}):
                found.append(o)
            elif kind == "text":
                found.append(o.get("text", "") + o.get("data", {}).get("text/plain", ""))
            elif kind == "error" and o.get("output_type") == "error":
                found.append(o)
    return found


def check_ran_in_this_interpreter(nb):
    assert nb.cells[-1].outputs[0]["text"].strip() == sys.prefix  # the venv's kernel, not another python


@pytest.mark.slow
def test_01_study_overview_from_the_notebooks_folder(study, tmp_path):
    work, _ = study
    (work / "notebooks").mkdir(exist_ok=True)
    # tracking_uri stays None: the notebook finds ../mlruns/mlflow.db as it would in the project.
    nb = run_notebook("01_study_overview.ipynb", {"study": NAME}, work / "notebooks", tmp_path)
    check_ran_in_this_interpreter(nb)
    assert not outputs(nb, "error")
    assert len(outputs(nb, "png")) >= 3  # T x alpha, history, finalized
    text = "\n".join(outputs(nb, "text"))
    assert f"experiment '{NAME}'" in text and "3 trials" in text
    assert "enqueued default" in text and "test_accuracy_mean" in text
    assert re.search(r"best\s+\d+\s+2\s+0\.\d+", text), "finalized table: config, trial, 2 seeds, mean"


@pytest.mark.slow
def test_02_distillation_vs_compression(study, tmp_path):
    work, uri = study
    nb = run_notebook("02_distillation_vs_compression.ipynb", {"experiment": f"{NAME}_compare", "tracking_uri": uri}, tmp_path, tmp_path)
    check_ran_in_this_interpreter(nb)
    assert len(outputs(nb, "png")) >= 4  # size, two latencies, parameters
    text = "\n".join(outputs(nb, "text"))
    for method in ("teacher", "student", "distill", "prune", "int8"):
        assert re.search(rf"^\d+\s+{method}\s+\d+", text, re.M), f"a summary row for {method}"


@pytest.mark.slow
def test_03_teachers(study, tmp_path):
    work, uri = study
    nb = run_notebook("03_teachers.ipynb", {"study": NAME, "tracking_uri": uri, "dominance": 0.4}, tmp_path, tmp_path)
    check_ran_in_this_interpreter(nb)
    assert len(outputs(nb, "png")) >= 4  # two simplex views, single-teacher comparison, T x alpha
    text = "\n".join(outputs(nb, "text"))
    assert "3 trials, 3 teachers" in text
    assert all(f"T{k}: mlp" in text for k in range(3)) and "best mixture" in text


def test_notebooks_are_committed_clean_with_one_parameters_cell():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["01_study_overview.ipynb", "02_distillation_vs_compression.ipynb", "03_teachers.ipynb"]
    for name in names:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert code[0] is parameters_cell(nb), f"{name}: the parameters cell comes first"
        assert "tracking_uri = None" in code[0].source
        assert all(not c.outputs and c.execution_count is None for c in code), f"{name}: committed with outputs"
        assert nb.metadata["kernelspec"]["name"] == "python3"


# ----------------------------------------------------------------------------- report functions on the real store


@pytest.mark.slow
def test_frames_and_figures_from_the_study(study):
    _, uri = study
    runs = report.runs_frame(NAME, uri)
    trials = report.trials_of(runs)
    assert list(trials["trial"]) == [0, 1, 2] and list(trials["state"]) == ["COMPLETE"] * 3
    assert list(trials["enqueued"]) == [True, False, False]
    w = trials[["weight_0", "weight_1", "weight_2"]].to_numpy()
    assert np.allclose(w.sum(1), 1) and np.allclose(w[0], 1 / 3)  # the enqueued default is uniform
    assert trials["temperature"].iloc[0] == 4.0 and trials["alpha"].iloc[0] == 0.1
    teachers = report.teachers_of(runs, trials, uri)
    assert list(teachers["teacher"]) == [0, 1, 2] and teachers["test_accuracy"].between(0, 1).all()
    assert list(teachers["run_id"]) == trials["teacher_run_id"].iloc[0].split(",")
    final = report.finalized(report.study_run_of(runs), report.final_runs_of(runs))
    assert "best" in set(final["config"]) and (final["seeds"] == 2).all()
    assert all(len(s) == 2 for s in final["per_seed"])
    seeds = report.final_runs_of(runs).groupby("config")["seed"].apply(sorted)
    assert all(list(s) == [0, 1] for s in seeds)  # the run's own seed (its tag), not the config's
    figs = report.study_run_figures(NAME, uri)
    assert {"trials_history", "trials_temperature_alpha", "finalized_test_accuracy", "teacher_weights", "vs_single_teacher"} <= set(figs)
    with pytest.raises(LookupError, match="no MLflow experiment named 'nope'"):
        report.runs_frame("nope", uri)


@pytest.mark.slow
def test_the_notebook_table_is_the_comparison_report(study):
    """Notebook 02 reads the comparison's runs back from MLflow; its table, rendered like
    `research compare` renders it, has the same rows as comparison.md (the teacher aside:
    `research compare` files it under budget 1x, its MLflow run has no budget tag)."""
    work, uri = study
    points = report.comparison_runs(report.runs_frame(f"{NAME}_compare", uri))
    table = report.comparison_table(points)
    teacher_params = int(table.loc[table["method"] == "teacher", "params"].iloc[0])
    md = report.comparison_markdown(f"{NAME}_compare", table, teacher_params=teacher_params, seeds=[0])
    written = (work / "compare" / "comparison.md").read_text()
    rows = lambda text: sorted(line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| teacher"))  # noqa: E731
    assert len(rows(written)) == 1 + 4 and rows(md) == rows(written)  # the header and distill, student, prune, int8


# ----------------------------------------------------------------------------- report functions, synthetic


def test_clean_runs_names_and_types():
    raw = pd.DataFrame({
        "run_id": ["a", "b"], "status": ["FINISHED", "KILLED"],
        "start_time": pd.to_datetime(["2026-01-01 00:00:00", "2026-01-01 00:00:00"], utc=True),
        "end_time": pd.to_datetime(["2026-01-01 00:00:05", "2026-01-01 00:00:01"], utc=True),
        "metrics.params": [100.0, 200.0], "params.params": ["x", "y"],
        "params.distill.alpha": ["0.1", "0.5"], "params.timeout_s": ["None", "3"], "params.student.args": ["{}", "{}"],
        "params.seed": ["0", "0"], "tags.seed": ["1", "2"],
        "tags.enqueued": ["True", "False"], "tags.trial_number": ["0", "1"], "tags.method": ["distill", "prune"],
        "tags.mlflow.runName": ["trial-000", "trial-001"], "tags.mlflow.user": ["me", "me"],
    })
    df = report.clean_runs(raw)
    assert list(df["params"]) == [100.0, 200.0] and list(df["params.params"]) == ["x", "y"]  # metrics win a clash
    assert list(df["seed"]) == [1, 2] and "params.seed" in df  # the run's own seed is its tag
    assert df["distill.alpha"].dtype.kind == "f" and np.isnan(df["timeout_s"].iloc[0])
    assert list(df["enqueued"]) == [True, False] and list(df["trial_number"]) == [0, 1]
    assert list(df["run_name"]) == ["trial-000", "trial-001"] and "mlflow.user" not in df and "tags.mlflow.user" not in df
    assert list(df["duration_s"]) == [5.0, 1.0] and list(df["student.args"]) == ["{}", "{}"]


def test_teacher_weights_from_each_source():
    flat = pd.DataFrame({"distill.teacher_weights.0": [0.2], "distill.teacher_weights.1": [0.8]})
    assert report.teacher_weights(flat).iloc[0].tolist() == pytest.approx([0.2, 0.8])
    text = pd.DataFrame({"distill.teacher_weights": ["[1.0, 1.0, 2.0]"]})
    assert report.teacher_weights(text).iloc[0].tolist() == pytest.approx([0.25, 0.25, 0.5])  # normalised
    raw = pd.DataFrame({"trial.w_0": [0.3], "trial.w_1": [0.1], "trial.w_2": [0.6], "trial.w_10": [0.0]})
    w = report.teacher_weights(raw)
    assert list(w.columns) == ["weight_0", "weight_1", "weight_2", "weight_3"]
    assert report.teacher_weights(pd.DataFrame({"x": [1]})).empty
    trials = pd.DataFrame({"weight_0": [0.6, 0.3, 0.2], "weight_1": [0.2, 0.3, 0.7], "weight_2": [0.2, 0.4, 0.1]})
    assert report.dominant_teacher(trials, 0.5).tolist() == [0, pd.NA, 1]


def test_pareto_front_per_method():
    pts = pd.DataFrame({
        "method": ["a", "a", "a", "a", "b", "b"],
        "size_bytes": [10, 20, 30, 20, 5, 50],
        "test_accuracy": [0.5, 0.7, 0.6, 0.7, 0.4, 0.9],
    })
    assert report.pareto_mask(pts["size_bytes"], pts["test_accuracy"]).tolist() == [True, True, False, True, True, True]
    front = report.pareto_front(pts, "size_bytes")
    assert front[front["method"] == "a"]["size_bytes"].tolist() == [10, 20, 20]  # ties are kept
    assert front[front["method"] == "b"]["size_bytes"].tolist() == [5, 50]
    table = report.comparison_table(pts.assign(latency_b1_ms=[1, 1, 1, 1, 1, 1]))  # no budget or tags: a row per run
    assert table["front_size_bytes"].sum() == 5 and table["method"].tolist() == ["a"] * 4 + ["b"] * 2
    assert report.method_summary(pts).set_index("method").loc["a", "runs"] == 4
    fig = report.plot_pareto(pts)
    assert len(fig.axes[0].get_legend().get_texts()) == 3  # a, b, and the front over both


def test_plots_say_so_when_there_is_nothing_to_draw():
    empty = pd.DataFrame({"trial": pd.Series([], dtype="Int64"), "state": [], "enqueued": []})
    for fig in (report.plot_temperature_alpha(empty), report.plot_finalized(report.finalized(None)), report.plot_pareto(pd.DataFrame())):
        assert fig.axes[0].texts, "an explanation instead of an empty chart"
    assert report.best_vs_defaults(empty).empty and report.best_trial(empty) is None
