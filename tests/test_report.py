"""The report's comparison table and Pareto chart (shared by `research compare` and notebook 02)
and the best trial of a frame, on small frames whose expected values are worked out by hand."""

import numpy as np
import pandas as pd
import pytest

from research import report


def results() -> pd.DataFrame:
    """Rows as `research compare` collects them: (method, budget, seed) and the run's metrics."""
    rows = [
        # distill at 2x: accuracy 0.90, 0.80, 0.85 over three seeds
        *[dict(method="distill", budget=2.0, seed=s, test_accuracy=a, params=100, params_nonzero=100, size_bytes=1000, payload_bytes=400,
               latency_b1_ms=0.1) for s, a in enumerate([0.90, 0.80, 0.85])],
        *[dict(method="distill", budget=4.0, seed=s, test_accuracy=a, params=50, params_nonzero=50, size_bytes=500, payload_bytes=200,
               latency_b1_ms=0.1) for s, a in enumerate([0.70, 0.70, 0.70])],
        dict(method="prune", budget=2.0, seed=0, test_accuracy=0.80, params=200, params_nonzero=100, size_bytes=1000, payload_bytes=600, latency_b1_ms=0.2),
        dict(method="prune", budget=4.0, seed=0, test_accuracy=0.60, params=200, params_nonzero=50, size_bytes=1100, payload_bytes=300, latency_b1_ms=0.2),
        # int8 has no budget (one model for all) and logs no params_nonzero
        dict(method="int8", budget=None, seed=0, test_accuracy=0.84, params=200, size_bytes=300, payload_bytes=250, latency_b1_ms=0.05),
        dict(method="int8", budget=None, seed=1, test_accuracy=0.86, params=200, size_bytes=300, payload_bytes=250, latency_b1_ms=0.07),
        dict(method="teacher", budget=1.0, seed=-1, test_accuracy=0.95, params=200, params_nonzero=200, size_bytes=2000, payload_bytes=800, latency_b1_ms=0.2),
    ]
    return pd.DataFrame(rows)


def test_comparison_table_is_one_row_per_configuration():
    t = report.comparison_table(results(), teacher_params=200)
    keys = [(m, None if pd.isna(b) else b) for m, b in zip(t["method"], t["budget"])]
    assert keys == [("int8", None), ("teacher", 1.0), ("distill", 2.0), ("prune", 2.0), ("distill", 4.0), ("prune", 4.0)]  # by budget, then method
    row = t.set_index(["method", "budget"]).loc[("distill", 2.0)]
    # mean 0.85; deviations +-0.05 and 0: sample variance 0.005 / 2 = 0.0025, std 0.05
    assert row["runs"] == 3 and row["test_accuracy"] == pytest.approx(0.85) and row["test_accuracy_std"] == pytest.approx(0.05)
    int8 = t[t["method"] == "int8"].iloc[0]
    # 0.84 and 0.86: mean 0.85, sample std sqrt((0.01^2 + 0.01^2) / 1) = 0.0141421
    assert int8["test_accuracy"] == pytest.approx(0.85) and int8["test_accuracy_std"] == pytest.approx(0.0141421, abs=1e-6)
    assert int8["latency_b1_ms"] == pytest.approx(0.06) and int8["runs"] == 2
    # reduction: 200 / non-zero parameters (int8 has none logged: its 200 parameters)
    assert dict(zip(zip(t["method"], t["budget"].fillna(0)), t["reduction"])) == {
        ("int8", 0): 1.0, ("teacher", 1.0): 1.0, ("distill", 2.0): 2.0, ("prune", 2.0): 2.0, ("distill", 4.0): 4.0, ("prune", 4.0): 4.0}
    # prune 4x (1,100 bytes, 0.60) is beaten by prune 2x (1,000 bytes, 0.80); distill 4x is smaller, distill 2x more accurate
    front = dict(zip(zip(t["method"], t["budget"].fillna(0)), t["front_size_bytes"]))
    assert front == {("int8", 0): True, ("teacher", 1.0): True, ("distill", 2.0): True, ("prune", 2.0): True, ("distill", 4.0): True,
                     ("prune", 4.0): False}
    # no teacher_params: the teacher row's parameters
    assert report.comparison_table(results())["reduction"].tolist() == t["reduction"].tolist()


def test_comparison_markdown_rows():
    t = report.comparison_table(results(), teacher_params=200)
    md = report.comparison_markdown("demo", t, teacher_params=200, seeds=[0, 1, 2], figure_files=["out/pareto_accuracy_vs_size.png"])
    lines = md.splitlines()
    assert lines[0] == "# Comparison `demo`" and "mean ± std over seeds [0, 1, 2]" in md
    assert "| method | budget | test accuracy | non-zero params | reached | payload bytes | file bytes | latency b1 ms | latency b256 ms |" in lines
    assert "| distill | 2x | 85.00 ± 5.00 | 100 | 2.0x | 400 | 1,000 | 0.100 | - |" in lines
    assert "| int8 | - | 85.00 ± 1.41 | 200 | 1.0x | 250 | 300 | 0.060 | - |" in lines
    assert lines[-1] == "![pareto_accuracy_vs_size](pareto_accuracy_vs_size.png)"


def test_budgets_met_over_and_overshot_are_labelled():
    # teacher 200 parameters: 2x allows 100, 4x allows 50
    rows = pd.DataFrame([
        dict(method="teacher", budget=1.0, seed=-1, test_accuracy=0.9, params=200, params_nonzero=200),
        dict(method="distill", budget=2.0, seed=0, test_accuracy=0.8, params=95, params_nonzero=95),          # 2.105x: met, close
        dict(method="distill+prune", budget=2.0, seed=0, test_accuracy=0.8, params=95, params_nonzero=49),   # 4.08x: far under
        dict(method="prune", budget=4.0, seed=0, test_accuracy=0.7, params=200, params_nonzero=51),          # 3.92x: over 50
        dict(method="lowrank", budget=4.0, seed=0, test_accuracy=0.7, params=50, params_nonzero=50),         # exactly 1/4
        dict(method="prune", budget=2.0, seed=0, test_accuracy=0.8, params=200, params_nonzero=101),         # 1.980x: just over 100
        dict(method="int8", budget=None, seed=0, test_accuracy=0.85, params=200),
    ])
    t = report.comparison_table(rows)
    keys = [f"{m} {b:g}x" if pd.notna(b) else m for m, b in zip(t["method"], t["budget"])]
    assert dict(zip(keys, t["within_budget"])) == {"teacher 1x": True, "distill 2x": True, "distill+prune 2x": True, "prune 2x": False,
                                                   "prune 4x": False, "lowrank 4x": True, "int8": None}
    md = report.comparison_markdown("b", t, teacher_params=200, seeds=[0])
    cells = [line.split(" | ")[:2] for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert cells == [["| method", "budget"], ["| int8", "-"], ["| teacher", "1x"], ["| distill", "2x"], ["| distill+prune", "2x (reached 4.1x)"],
                     ["| prune", "2x (over: 1.98x)"], ["| lowrank", "4x"], ["| prune", "4x (over: 3.9x)"]]


def test_the_comparison_charts_are_drawn_on_the_payload():
    figs = report.comparison_figures(results())
    assert figs["pareto_accuracy_vs_size"].axes[0].get_xlabel() == report.axis_label("payload_bytes")
    assert figs["pareto_accuracy_vs_latency"].axes[0].get_xlabel() == report.axis_label("latency_b1_ms")
    # runs logged before payloads were measured: the file bytes
    old = report.comparison_figures(results().drop(columns="payload_bytes"))
    assert old["pareto_accuracy_vs_size"].axes[0].get_xlabel() == report.axis_label("size_bytes")
    t = report.comparison_table(results(), teacher_params=200)
    # on the payload, prune 4x (300 bytes, 0.60) is on prune's front: prune 2x (600 bytes) is larger
    front = dict(zip(zip(t["method"], t["budget"].fillna(0)), t["front_payload_bytes"]))
    assert front[("prune", 4.0)] and front[("prune", 2.0)]


def test_seed_means_groups_by_the_configuration_tags():
    runs = pd.DataFrame({
        "method": ["distill", "distill", "distill", "teacher", "teacher", "distill"],
        "budget": [np.nan] * 6,
        "config_hash": ["h1", "h1", "h2", None, None, None],  # two seeds of one trial, then another trial
        "teacher_key": [None, None, None, "k0", "k1", None],  # two different teachers
        "test_accuracy": [0.6, 0.8, 0.5, 0.9, 0.7, 0.4],
    })
    m = report.seed_means(runs)
    assert m["runs"].tolist() == [2, 1, 1, 1, 1]  # h1 (two seeds), h2, k0, k1, and the run with no tags
    assert m["test_accuracy"].tolist() == pytest.approx([0.7, 0.5, 0.9, 0.7, 0.4])
    # a frame without budget or configuration tags: every row is its own configuration
    assert report.seed_means(runs[["method", "test_accuracy"]])["runs"].tolist() == [1] * 6


def test_plot_pareto_draws_means_with_the_std_over_seeds():
    fig = report.plot_pareto(results(), "size_bytes")
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["teacher (1 run)", "distill (6 runs)", "int8 (2 runs)", "prune (2 runs)", "Pareto front over all methods"]
    distill = next(c for c in ax.containers if c.get_label() == "distill (6 runs)")
    # x 1,000 bytes: mean 0.85 +- 0.05; x 500: 0.70 +- 0
    bars = sorted((seg[0][0], seg[0][1], seg[1][1]) for seg in distill.lines[2][0].get_segments())
    assert np.allclose(bars, [(500, 0.70, 0.70), (1000, 0.80, 0.90)])
    assert ax.get_xscale() == "linear"  # 300 to 2,000 bytes: less than a decade


def test_best_trial_of_a_frame():
    trials = pd.DataFrame({"trial": [0, 1, 2, 3, 4], "state": ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE", "COMPLETE"],
                           "val_accuracy": [0.5, 0.9, 0.7, 0.7, np.nan]})
    assert report.best_trial(trials)["trial"] == 2  # 2 and 3 tie at 0.7: the lower number; the pruned 0.9 does not count
    assert report.best_trial(trials, direction="minimize")["trial"] == 0
    assert report.best_trial(trials, "test_accuracy") is None  # no such column
    with pytest.raises(ValueError, match="direction"):
        report.best_trial(trials, direction="max")
