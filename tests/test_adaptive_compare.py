"""The adaptive comparison (research.adaptive, studies/mnist1d_adaptive.yaml) on tiny budgets: choices are
made on validation (checked against the child runs read back from MLflow), each (settings, seed) is
trained once, and the table, the chart and the parent run carry the results."""

from __future__ import annotations

import shutil

import pytest
from mlflow.tracking import MlflowClient

from research import report
from research.adaptive import load_adaptive_config, run_adaptive
from research.config import ConfigError

from .conftest import REPO

CONFIG = REPO / "studies" / "mnist1d_adaptive.yaml"
TINY = [
    "data.transfer_size=300", "train.epochs=1", "eval.latency_repeats=1",
    *[f"teachers.{i}.train.epochs=1" for i in range(3)],
    "adaptive.seeds=[0, 1]", "adaptive.fixed_temperatures=[2, 8]", "adaptive.weight_points=1",
    "adaptive.temperature_methods=[{label: ctkd, candidates: [{temperature: {kind: learnable, warmup_epochs: 1}}]},"
    " {label: std, candidates: [{temperature: {kind: standardized, base: 1}}, {temperature: {kind: standardized, base: 4}}]}]",
    "adaptive.teacher_methods=[{label: ca_mkd + kl_sum, distill: {weighting: {kind: ca_mkd}, combine: kl_sum}},"
    " {label: learned + probs, distill: {weighting: {kind: learned}}}]",
]


@pytest.mark.slow
def test_tiny_comparison_chooses_on_validation_and_logs_one_parent_run(tmp_path, mnist1d_arrays, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(mnist1d_arrays, tmp_path / ".cache")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_adaptive_config(CONFIG, [*TINY, f"tracking.uri={uri}", "data.cache_dir=.cache"])
    table = run_adaptive(cfg, tmp_path / "out", config_path=CONFIG, progress=False, command="tiny")

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("mnist1d_adaptive")
    (parent,) = client.search_runs([exp.experiment_id], "tags.role = 'comparison'")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=500)
    assert parent.info.status == "FINISHED"

    # T*: the fixed temperature with the best validation accuracy among the seed-0 runs, read back from MLflow
    fixed = {float(r.data.params["distill.temperature"]): r.data.metrics["val_accuracy"] for r in children
             if r.data.tags["method"] == "fixed T (searched)" and r.data.tags["seed"] == "0"}
    assert set(fixed) == {2.0, 8.0}
    t_star = max(sorted(fixed), key=lambda t: fixed[t])  # the first on a tie, as the grid is ordered
    assert float(parent.data.params["T_star"]) == t_star
    # the weighting part ran at T*, with every teacher
    for r in children:
        if r.data.tags["part"] == "teachers" and "alone" not in r.data.tags["method"] and r.data.tags["method"] != "best single teacher":
            assert float(r.data.params["distill.temperature"]) == t_star and r.data.tags["teachers_used"] == "0,1,2"

    # each (settings, seed) trained once: 17 runs, +1 when the best single teacher is not teacher 0 (teacher 0
    # alone at T* is the fixed-T run), +1 when the searched weights are not the uniform point (its run is reused)
    best_single = int(parent.data.params["best_single_teacher"])
    uniform_won = parent.data.params["searched_weights"].replace(" ", "") == str([1 / 3] * 3).replace(" ", "")
    assert len(children) == 17 + (best_single != 0) + (not uniform_won)

    md = table.read_text()
    for method in ("fixed T (searched)", "ctkd", "std", "best single teacher", "uniform ensemble", "searched fixed weights",
                   "ca_mkd + kl_sum", "learned + probs"):
        assert f"| {method} |" in md
    assert f"T*={t_star:g}" in md and "standardized(base=" in md
    assert (tmp_path / "out" / "adaptive_test_accuracy.png").stat().st_size > 5000
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/comparison.md", "report/adaptive_test_accuracy.png"} <= artifacts
    # what the rules did is in the table: the learned temperature, and the per-teacher mean weights of CA-MKD
    ca_row = next(line for line in md.splitlines() if line.startswith("| teachers | ca_mkd + kl_sum |"))
    assert "w=[" in ca_row

    # the table rebuilt from the tracked runs (what notebooks/03_teachers shows) has the markdown's numbers
    table = report.adaptive_table(report.runs_frame("mnist1d_adaptive", uri))
    md_order = [line.split("|")[2].strip() for line in md.splitlines() if line.startswith(("| temperature |", "| teachers |"))]
    assert list(table["method"]) == md_order and md_order[:3] == ["fixed T (searched)", "ctkd", "std"] and (table["seeds"] == 2).all()
    assert set(table.loc[table["is_baseline"], "method"]) == {"fixed T (searched)", "uniform ensemble"}
    for _, r in table.iterrows():
        line = next(x for x in md.splitlines() if x.startswith(f"| {r['part']} | {r['method']} |"))
        assert f"{100 * r['test_mean']:.2f} ± {100 * r['test_sd']:.2f}" in line
    # the fixed-T row's test mean, from the child runs directly
    fixed_runs = [c for c in children if "0:temperature:fixed T (searched)" in c.data.tags.get("rows", "").split("|")]
    assert len(fixed_runs) == 2
    assert table.iloc[0]["test_mean"] == pytest.approx(sum(c.data.metrics["test_accuracy"] for c in fixed_runs) / 2)
    fig = report.plot_adaptive(table)
    assert len(fig.axes) == 2


@pytest.mark.parametrize("overrides, match", [
    (["adaptive.select_seed=5"], r"select_seed 5 must be one of seeds"),
    (["adaptive.teacher_methods=[{label: x, distill: {weighting: {kind: oracle}}}]"],
     r"adaptive.teacher_methods.0.distill: weighting: unknown weighting kind 'oracle'"),
    (["adaptive.temperature_methods=[{label: a, candidates: [{temperature: {kind: annealed, end: 0}}]}]"],
     r"adaptive.temperature_methods.0.candidates.0: temperature: temperature kind 'annealed': end"),
    (["distill.teacher_weights=[1, 1, 1]"], r"distill.teacher_weights: leave it null"),
])
def test_bad_comparison_files_are_refused_in_one_line(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_adaptive_config(CONFIG, overrides)
