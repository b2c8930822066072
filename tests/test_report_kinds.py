"""report.trials_by_kind: a study's MLflow trial frame grouped by the kinds it searched
(the notebook 01 view of issue 9); expected rows written out by hand."""

import pandas as pd

from research.report import trials_by_kind


def frame(rows):
    return pd.DataFrame(rows, columns=["trial", "state", "val_accuracy", "distill.temperature.kind", "distill.weighting.kind"])


def test_groups_completed_trials_by_every_kind_that_varied_best_first():
    trials = frame([
        (0, "COMPLETE", 0.80, "fixed", "fixed"),
        (1, "COMPLETE", 0.85, "annealed", "fixed"),
        (2, "PRUNED", 0.99, "annealed", "fixed"),  # not complete: left out, however good
        (3, "COMPLETE", 0.70, "fixed", "fixed"),
        (4, "COMPLETE", 0.85, "annealed", "fixed"),  # ties trial 1: the lower number is the best
    ])
    got = trials_by_kind(trials, "val_accuracy", "maximize")
    # The weighting kind never varied: no rows for it.
    assert got.to_dict("records") == [
        {"searched": "distill.temperature.kind", "kind": "annealed", "trials": 2, "best": 0.85, "mean": 0.85, "best_trial": 1},
        {"searched": "distill.temperature.kind", "kind": "fixed", "trials": 2, "best": 0.80, "mean": 0.75, "best_trial": 0},
    ]
    low = trials_by_kind(trials, "val_accuracy", "minimize")
    assert list(low["kind"]) == ["fixed", "annealed"] and list(low["best"]) == [0.70, 0.85]


def test_a_study_without_kinds_gives_an_empty_table():
    plain = pd.DataFrame({"trial": [0, 1], "state": ["COMPLETE", "COMPLETE"], "val_accuracy": [0.5, 0.6], "temperature": [2.0, 4.0]})
    got = trials_by_kind(plain)
    assert got.empty and list(got.columns) == ["searched", "kind", "trials", "best", "mean", "best_trial"]
    assert trials_by_kind(pd.DataFrame()).empty
