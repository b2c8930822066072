"""research.stats: mean ± std over seeds, trial state counts, the best-first order of trials.
Expected values are worked out by hand in the comments."""

import enum
import math

import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState

from research.stats import best_first, best_of, direction_sign, format_mean_std, format_state_counts, mean_std, state_counts


def test_mean_std_is_the_sample_std():
    # mean (1 + 2 + 4) / 3 = 7/3; deviations -4/3, -1/3, 5/3; squares 16/9 + 1/9 + 25/9 = 42/9;
    # over n - 1 = 2: 21/9 = 7/3; std sqrt(7/3) = 1.5275...
    mean, std = mean_std([1, 2, 4])
    assert mean == pytest.approx(7 / 3) and std == pytest.approx(math.sqrt(7 / 3)) and std == pytest.approx(1.527525, abs=1e-6)
    # 0.90, 0.80, 0.85: mean 0.85, deviations +-0.05 and 0, (0.0025 + 0.0025) / 2 = 0.0025, std 0.05
    assert mean_std((0.90, 0.80, 0.85)) == pytest.approx((0.85, 0.05))
    assert mean_std([5]) == (5.0, 0.0)  # one seed: no spread


def test_mean_std_refuses_nothing_and_nan():
    with pytest.raises(ValueError, match="no values"):
        mean_std([])
    with pytest.raises(ValueError, match="NaN"):
        mean_std([1.0, float("nan")])


def test_format_mean_std():
    assert format_mean_std(0.92031, 0.0029, scale=100, unit=" %") == "92.03 ± 0.29 %"
    assert format_mean_std(12.345, 0.06, digits=1) == "12.3 ± 0.1"
    assert format_mean_std(0.5, None) == "0.50 ± 0.00" == format_mean_std(0.5, float("nan"))


def test_state_counts_from_names_and_enums():
    assert state_counts(["COMPLETE", "PRUNED", "COMPLETE", "FAIL"]) == {"COMPLETE": 2, "PRUNED": 1, "FAIL": 1, "RUNNING": 0, "WAITING": 0}
    optuna_states = [TrialState.COMPLETE, TrialState.RUNNING, TrialState.COMPLETE, TrialState.COMPLETE]
    assert state_counts(optuna_states) == {"COMPLETE": 3, "PRUNED": 0, "FAIL": 0, "RUNNING": 1, "WAITING": 0}
    other = enum.Enum("Other", "COMPLETE LOST")
    assert state_counts([other.LOST, other.COMPLETE])["LOST"] == 1
    assert state_counts([]) == {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0, "WAITING": 0}
    assert format_state_counts(state_counts(["PRUNED", "COMPLETE", "PRUNED"])) == "1 complete, 2 pruned, 0 failed"


def test_direction_sign():
    assert direction_sign("maximize") == -1 and direction_sign("MINIMIZE") == 1
    assert direction_sign(StudyDirection.MAXIMIZE) == -1 and direction_sign(StudyDirection.MINIMIZE) == 1
    with pytest.raises(ValueError, match="maximize"):
        direction_sign("max")


def test_best_first_order():
    trials = [(0, 0.5), (1, 0.7), (2, 0.7), (3, 0.6)]  # (number, value)
    order = lambda **kw: [n for n, _ in best_first(trials, value=lambda t: t[1], number=lambda t: t[0], **kw)]  # noqa: E731
    assert order(direction="maximize") == [1, 2, 3, 0]  # 1 and 2 tie: the lower number first
    assert order(direction="minimize") == [0, 3, 1, 2]
    assert order(direction="maximize", preferred={2, 0}) == [2, 0, 1, 3]  # preferred first, each group by value
    assert best_of(trials, value=lambda t: t[1], number=lambda t: t[0], direction="maximize") == (1, 0.7)
    assert best_of([], value=float, number=int, direction="maximize") is None
