"""The few summaries every report, study and command shares: mean ± std over seeds,
counts of trial states, and which way an objective's "best" lies.

Plain Python on plain values (floats, state names), so that the engine, the sweep,
the CLI, the report and the benchmarks agree to the digit without importing each other.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
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


# ---------------------------------------------------------------- standard errors and paired comparisons


def mean_se(values: Iterable[float]) -> tuple[float, float]:
    """Mean and standard error of the mean, ``stdev / sqrt(n)`` with the sample standard
    deviation (n - 1 in the denominator), e.g. a trial's objective over its repeats or folds.
    The standard error of a single value is NaN (it cannot be estimated from one value).

    Raises ValueError on no values or a NaN, as :func:`mean_std` does."""
    vals = [float(v) for v in values]
    mean, std = mean_std(vals)
    return mean, (std / math.sqrt(len(vals)) if len(vals) > 1 else math.nan)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom
    (``scipy.stats.t.ppf``), e.g. ``t_quantile(0.975, 2) = 4.303``. Raises ValueError
    when ``df < 1`` or ``p`` is not in (0, 1)."""
    if df < 1:
        raise ValueError(f"Student's t needs df >= 1, got {df}")
    if not 0 < p < 1:
        raise ValueError(f"a quantile needs p in (0, 1), got {p}")
    from scipy.stats import t  # imported here: only the comparisons need scipy

    return float(t.ppf(p, df))


@dataclass(frozen=True)
class PairedDiff:
    """The mean of paired differences ``a_i - b_i`` (e.g. per seed: best minus default test
    accuracy) and its confidence interval. ``low``/``high`` are NaN when ``n < 2``."""

    n: int
    mean: float
    sd: float  # sample standard deviation of the differences (n - 1), 0.0 for one pair
    low: float
    high: float
    confidence: float = 0.95

    @property
    def has_ci(self) -> bool:
        return self.n >= 2 and not math.isnan(self.low)

    @property
    def excludes_zero(self) -> bool:
        """Whether the interval lies entirely above or entirely below 0 (False without an interval)."""
        return self.has_ci and (self.low > 0 or self.high < 0)


def paired_t_ci(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedDiff:
    """Student's t confidence interval for the mean of the paired differences d_i = a_i - b_i
    (the paired t-test's interval; e.g. Wasserman, *All of Statistics*, or any textbook):

        mean(d) ± t_{(1 + confidence)/2, n-1} · sd(d) / sqrt(n)

    with sd the sample standard deviation (n - 1 in the denominator). Pairs share a seed (or a
    fold), so what varies with the seed cancels in each difference. Worked example: d = [1, 2, 3]:
    mean 2, sd 1, t_{0.975, 2} = 4.303, interval 2 ± 4.303 / sqrt(3) = [-0.484, 4.484].

    One pair: the mean, no interval (low = high = NaN). Raises ValueError when the lengths
    differ, there are no pairs, a value is NaN, or confidence is not in (0, 1)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    mean, sd = mean_std(diffs)  # ValueError on none or a NaN
    n = len(diffs)
    if n < 2:
        return PairedDiff(n, mean, sd, math.nan, math.nan, confidence)
    half = t_quantile((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
    return PairedDiff(n, mean, sd, mean - half, mean + half, confidence)


def format_paired_diff(n: int, mean: float, low: float | None = None, high: float | None = None, *, direction: Any = "maximize",
                       scale: float = 100.0, unit: str = " points", digits: int = 2, what: str = "best - default",
                       confidence: float = 0.95) -> str:
    """One sentence on whether a search bought anything, from a paired comparison
    (:func:`paired_t_ci`, or the same numbers read back from a run):
    ``"best - default = +0.20 points (95% CI -1.90 to +2.30, 3 seeds): not distinguishable from the default"``.
    The verdict: "the search helped" when the interval lies on the better side of 0 for
    ``direction`` (the metric's), "the default was better" when on the other side, else "not
    distinguishable from the default"; with one seed (or no interval) it says the interval
    needs at least 2 seeds. Values times ``scale`` (100: a fraction shown in points)."""
    seeds = f"{n} seed" + ("s" if n != 1 else "")
    head = f"{what} = {scale * mean:+.{digits}f}{unit}"
    if n < 2 or low is None or high is None or math.isnan(low) or math.isnan(high):
        return f"{head} ({seeds}): a confidence interval needs >= 2 seeds, so this says nothing yet"
    better = -direction_sign(direction)  # +1: larger is better
    if low > 0 or high < 0:
        verdict = "the search helped" if (low > 0) == (better > 0) else "the default was better"
    else:
        verdict = "not distinguishable from the default"
    pct = f"{100 * confidence:g}%"
    return f"{head} ({pct} CI {scale * low:+.{digits}f} to {scale * high:+.{digits}f}, {seeds}): {verdict}"


def paired_sentence(paired: dict[str, float] | None, *, direction: str = "maximize") -> str | None:
    """One sentence from finalize's "paired" entry (or the parent run's ``final_paired_*``
    metrics without the prefix): best - default in points with its 95 % CI and seeds, and
    whether the search helped (:func:`format_paired_diff`); None when there is nothing to say."""
    if not paired:
        return None
    if paired.get("default_is_best"):
        return "the best trial is the enqueued default itself: the search found nothing better on validation"
    if "diff_mean" not in paired or "seeds" not in paired:
        return None
    return format_paired_diff(int(paired["seeds"]), paired["diff_mean"], paired.get("diff_ci_low"), paired.get("diff_ci_high"),
                              direction=direction)
