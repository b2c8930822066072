"""Word and phoneme error rates against several reference pronunciations.

A hypothesis and each reference are sequences of hashable symbols (phoneme
strings or token ids). A word may have several correct pronunciations, so:

* WER (word error rate) = share of words whose hypothesis equals NONE of
  the word's references exactly (in [0, 1]).
* PER (phoneme error rate): for each word, the reference closest to the
  hypothesis by Levenshtein distance d (insertions, deletions and
  substitutions, each cost 1; ties go to the reference listed first); then

      PER = sum_words d(hyp, closest ref) / sum_words len(closest ref)

  i.e. pooled over the corpus (errors over reference phonemes, as speech
  recognition's error rates are pooled), not the mean of per-word ratios.
  PER can exceed 1 (long hypotheses). Scoring against the best-matching
  variant is the usual G2P convention for dictionaries with variants (Sequitur
  G2P's evaluation, Bisani & Ney 2008, does so); papers differ in whether
  they pool or average per word, so check a paper's definition before
  comparing numbers with it.

Edit distances come from ``rapidfuzz.distance.Levenshtein`` (maintained,
C++), which takes any sequences of hashables.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from rapidfuzz.distance import Levenshtein

__all__ = ["closest_reference", "edit_distance", "error_rates", "phoneme_error_rate", "word_error_rate"]

Seq = Sequence[Hashable]


def edit_distance(a: Seq, b: Seq) -> int:
    """Levenshtein distance between two sequences (unit costs)."""
    return int(Levenshtein.distance(list(a), list(b)))


def closest_reference(hyp: Seq, refs: Sequence[Seq]) -> tuple[int, int]:
    """(index, distance) of the reference closest to ``hyp``; the first one on ties.
    ValueError when ``refs`` is empty."""
    if not refs:
        raise ValueError("a word needs at least one reference")
    best_i, best_d = 0, edit_distance(hyp, refs[0])
    for i, r in enumerate(refs[1:], start=1):
        d = edit_distance(hyp, r)
        if d < best_d:
            best_i, best_d = i, d
    return best_i, best_d


def _check(hyps: Sequence[Seq], refs: Sequence[Sequence[Seq]]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses for {len(refs)} words")
    if not hyps:
        raise ValueError("no words to score")


def word_error_rate(hyps: Sequence[Seq], refs: Sequence[Sequence[Seq]]) -> float:
    """Share of words whose hypothesis equals none of their references."""
    _check(hyps, refs)
    wrong = sum(1 for h, rs in zip(hyps, refs) if not any(list(h) == list(r) for r in rs))
    return wrong / len(hyps)


def phoneme_error_rate(hyps: Sequence[Seq], refs: Sequence[Sequence[Seq]]) -> float:
    """sum of distances to the closest reference / sum of those references' lengths (see module docstring)."""
    _check(hyps, refs)
    dist = total = 0
    for h, rs in zip(hyps, refs):
        i, d = closest_reference(h, rs)
        dist += d
        total += len(rs[i])
    if total == 0:
        raise ValueError("the closest references are all empty: PER is undefined")
    return dist / total


def error_rates(hyps: Sequence[Seq], refs: Sequence[Sequence[Seq]]) -> dict[str, float]:
    """{"wer": ..., "per": ...}."""
    return {"wer": word_error_rate(hyps, refs), "per": phoneme_error_rate(hyps, refs)}
