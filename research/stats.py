"""The few summaries every report, study and command shares: mean ± std over seeds,
counts of trial states, and which way an objective's "best" lies.

Plain Python on plain values (floats, state names), so that the engine, the sweep,
the CLI, the report and the benchmarks agree to the digit without importing each other.
"""

from __future__ import annotations

import math
import statistics
from typing import Any, Callable, Collection, Iterable, Sequence, TypeVar

T = TypeVar("T")

# Optuna's trial states, in the order a summary names them.
TRIAL_STATE_NAMES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1 in the denominator, ``statistics.stdev``)
    of the values, e.g. one metric over seeds; the std of a single value is 0.0.

    Raises ValueError on no values, or on a NaN (a missing metric must be left out, not averaged)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_std of no values")
    if any(math.isnan(v) for v in vals):
        raise ValueError(f"mean_std of values with a NaN: {vals}")
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0


def format_mean_std(mean: float, std: float | None, *, digits: int = 2, scale: float = 1.0, unit: str = "") -> str:
    """``"<mean> ± <std><unit>"``, both times ``scale`` (100 for a fraction shown in %) with
    ``digits`` decimals; a missing std (None or NaN: one run) reads as 0."""
    if std is None or (isinstance(std, float) and math.isnan(std)):
        std = 0.0
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}{unit}"


def state_counts(states: Iterable[Any]) -> dict[str, int]:
    """How many trials are in each state: ``{"COMPLETE": n, "PRUNED": n, "FAIL": n,
    "RUNNING": n, "WAITING": n}`` (every key present, 0 when none). A state is a name
    (``"COMPLETE"``) or an enum with that ``name`` (Optuna's ``TrialState``); any other
    name is counted under its own key after these."""
    counts = dict.fromkeys(TRIAL_STATE_NAMES, 0)
    for s in states:
        name = str(getattr(s, "name", s))
        counts[name] = counts.get(name, 0) + 1
    return counts


def format_state_counts(counts: dict[str, int]) -> str:
    """``"3 complete, 1 pruned, 0 failed"`` from ``state_counts``."""
    return f"{counts.get('COMPLETE', 0)} complete, {counts.get('PRUNED', 0)} pruned, {counts.get('FAIL', 0)} failed"


def direction_sign(direction: Any) -> int:
    """-1 for "maximize", +1 for "minimize" (any case, or an enum with that ``name`` such as
    Optuna's ``StudyDirection``): ``sign * value`` is smaller for the better value.
    Raises ValueError on anything else."""
    name = str(getattr(direction, "name", direction)).lower()
    if name == "maximize":
        return -1
    if name == "minimize":
        return 1
    raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")


def best_first(items: Iterable[T], *, value: Callable[[T], float], number: Callable[[T], int], direction: Any,
               preferred: Collection[int] = ()) -> list[T]:
    """The items ordered best first: those whose ``number`` is in ``preferred`` (a study's
    Pareto front, or a best chosen elsewhere) before the others, then by ``value`` in
    ``direction``, the lowest number first on a tie. The one ordering of trials: Optuna
    trials (``sweep.best_trials``), the rows of ``sweep.trials_table`` and MLflow trial frames."""
    sign = direction_sign(direction)
    prefer = set(preferred)
    return sorted(items, key=lambda t: (bool(prefer) and number(t) not in prefer, sign * value(t), number(t)))


def best_of(items: Sequence[T], *, value: Callable[[T], float], number: Callable[[T], int], direction: Any,
            preferred: Collection[int] = ()) -> T | None:
    """The first of ``best_first`` (None when there are no items)."""
    ranked = best_first(items, value=value, number=number, direction=direction, preferred=preferred)
    return ranked[0] if ranked else None
