"""Sequence-level distillation (Kim & Rush 2016): the student learns from the teacher's beam search.

Methods (names used by :func:`method_learner` and the benchmark), all driven by the one
training loop (``research.train.fit``) with the ``g2p`` task:

* ``student``: the student alone, CE on the reference pairs (``data.train``);
* ``word_kd``: word-level KD -- the ``kd`` objective (Hinton's loss, the workbench's
  convention) on every real target token of the reference pairs (``Distiller``);
* ``seq_kd``: sequence-level KD -- CE on the teacher's top beam output for every
  training word (``top_k`` > 1: its k best hypotheses, each a training row);
* ``seq_inter``: sequence-level interpolation -- CE on the teacher's beam hypothesis
  closest to a reference. Kim & Rush pick the hypothesis with the best sentence BLEU
  against the reference; here the smallest Levenshtein distance to ANY of the word's
  references (G2P has several), ties to the higher-ranked hypothesis;
* ``seq_word_kd``: sequence-level + word-level -- the ``kd`` objective on the teacher's
  top beam outputs (teacher-forced teacher distributions on the teacher's own outputs;
  the hard term is CE on those outputs).

The teacher's n-best lists over the training words are computed once and cached
(:class:`TeacherBeamCache`), keyed by the teacher's weights (``model_fingerprint``, as
the logit cache), the words' split fingerprint and the beam settings; the selection
(top 1, top k, closest) is made from the cached lists, so every method shares one search.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..data import Split
from ..decoding import beam_search
from ..g2p_metrics import edit_distance
from ..tasks import Task, build_task
from ..tasks.sequence import _max_output, references
from .cache import MemoryDiskCache, model_fingerprint
from .distiller import Distiller, Supervised, build_distiller

__all__ = ["METHODS", "BeamSettings", "NBest", "TeacherBeamCache", "method_learner", "seq_inter_targets",
           "seq_kd_targets", "sequence_kd_split", "sequence_training_split"]

PAD, EOS = 0, 2
METHODS = ("student", "word_kd", "seq_kd", "seq_inter", "seq_word_kd")


@dataclass(frozen=True)
class BeamSettings:
    """The teacher's search: ``beam`` width, ``length_penalty`` (see ``research.decoding``),
    ``max_len`` output tokens (None: source width + 8, as the task's evaluation)."""

    beam: int = 5
    length_penalty: float = 1.0
    max_len: int | None = None
    batch_size: int = 256

    def __post_init__(self) -> None:
        if self.beam < 1 or self.batch_size < 1 or (self.max_len is not None and self.max_len < 0) or self.length_penalty < 0:
            raise ValueError(f"invalid beam settings {self}")

    def key(self) -> str:
        # batch_size does not change the result (a padded batch decodes as one row at a time)
        return json.dumps({k: v for k, v in asdict(self).items() if k != "batch_size"}, sort_keys=True)


@dataclass(frozen=True)
class NBest:
    """A teacher's n-best lists: ``tokens`` [W, K, L] as targets (ids, EOS, PAD; an all-PAD row
    where a word has fewer than K hypotheses), ``log_prob`` and ``score`` [W, K] float64
    (-inf where missing), best ``score`` first."""

    tokens: torch.Tensor
    log_prob: torch.Tensor
    score: torch.Tensor

    def hypotheses(self, i: int) -> list[tuple[int, ...]]:
        """Word ``i``'s hypotheses (tokens without EOS), best first."""
        return [r for r in references(self.tokens[i : i + 1])[0]]


def _to_nbest(results: list[list], k: int) -> NBest:
    width = max(len(h.tokens) for hyps in results for h in hyps) + 1
    tokens = torch.full((len(results), k, width), PAD, dtype=torch.int64)
    lp = torch.full((len(results), k), float("-inf"), dtype=torch.float64)
    sc = lp.clone()
    for i, hyps in enumerate(results):
        for j, h in enumerate(hyps):
            tokens[i, j, : len(h.tokens) + 1] = torch.tensor([*h.tokens, EOS], dtype=torch.int64)
            lp[i, j], sc[i, j] = h.log_prob, h.score
    return NBest(tokens, lp, sc)


class TeacherBeamCache(MemoryDiskCache):
    """In-memory and (with ``directory``) on-disk cache of a teacher's n-best lists."""

    what = "teacher beam cache"

    def key(self, teacher: nn.Module, data_fingerprint: str, settings: BeamSettings) -> str:
        beam_part = hashlib.sha256(settings.key().encode()).hexdigest()[:12]
        return f"beam-{model_fingerprint(teacher)}-{data_fingerprint}-{beam_part}"

    def nbest(self, teacher: nn.Module, words: Split, settings: BeamSettings) -> NBest:
        """The teacher's ``settings.beam`` best hypotheses for every row of ``words.x``."""
        def compute() -> NBest:
            max_len = _max_output(teacher, words.x) if settings.max_len is None else settings.max_len
            device = next(teacher.parameters()).device
            results = []
            for i in range(0, len(words), settings.batch_size):
                results += beam_search(teacher, words.x[i : i + settings.batch_size].to(device), beam=settings.beam,
                                       max_len=max_len, length_penalty=settings.length_penalty)
            return _to_nbest(results, settings.beam)

        return self._cached(self.key(teacher, words.fingerprint(), settings), compute,
                            to_file=lambda v: {"tokens": v.tokens, "log_prob": v.log_prob, "score": v.score},
                            from_file=lambda d: NBest(**d))


def seq_kd_targets(nbest: NBest, top_k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(row [M], targets [M, L]): the ``top_k`` best hypotheses of every word, word index ``row``."""
    if not 1 <= top_k <= nbest.tokens.shape[1]:
        raise ValueError(f"top_k must be in [1, {nbest.tokens.shape[1]}], got {top_k}")
    present = nbest.tokens[:, :top_k, 0] != PAD  # [W, k]
    rows, ranks = present.nonzero(as_tuple=True)
    return rows, nbest.tokens[rows, ranks]


def seq_inter_targets(nbest: NBest, refs: torch.Tensor) -> torch.Tensor:
    """Targets [W, L]: per word the hypothesis with the smallest edit distance to any of its
    references ``refs`` ([W, Lt] or [W, R, Lt]); ties go to the better-ranked hypothesis."""
    if len(refs) != len(nbest.tokens):
        raise ValueError(f"{len(refs)} reference rows for {len(nbest.tokens)} n-best lists")
    ref_lists = references(refs)
    picks = []
    for i, word_refs in enumerate(ref_lists):
        hyps = nbest.hypotheses(i)
        dists = [min(edit_distance(h, r) for r in word_refs) for h in hyps]
        picks.append(min(range(len(hyps)), key=lambda j: (dists[j], j)))
    return nbest.tokens[torch.arange(len(picks)), torch.tensor(picks)]


def sequence_kd_split(words: Split, nbest: NBest, method: str, *, top_k: int = 1) -> Split:
    """The training split of a sequence-level method: the words' sources with the teacher's targets."""
    if method in ("seq_kd", "seq_word_kd"):
        rows, y = seq_kd_targets(nbest, top_k)
        return Split(words.x[rows], y)
    if method == "seq_inter":
        return Split(words.x, seq_inter_targets(nbest, words.y))
    raise ValueError(f"{method!r} is not a sequence-level method (seq_kd, seq_inter, seq_word_kd)")


def method_learner(method: str, student: nn.Module, teacher: nn.Module, *, pairs: Split, words: Split,
                   cache: TeacherBeamCache, settings: BeamSettings, distill_cfg=None, top_k: int = 1,
                   task: Task | None = None) -> tuple[Supervised | Distiller, Split]:
    """(learner, training split) of ``method`` (one of :data:`METHODS`) for ``research.train.fit``.

    ``pairs``: the reference (word, pronunciation) pairs; ``words``: each training word once
    with its references (the teacher searches over these). ``distill_cfg``: a
    ``research.config.DistillConfig`` for the word-level methods (its objective and knobs).
    """
    task = task or build_task("g2p")
    if method not in METHODS:
        raise ValueError(f"unknown sequence method {method!r}; available: {', '.join(METHODS)}")
    if method in ("word_kd", "seq_word_kd") and distill_cfg is None:
        raise ValueError(f"{method} needs a distill config (objective, temperature, alpha)")
    if method == "student":
        return Supervised(student, task=task), pairs
    if method == "word_kd":
        return build_distiller(student, [teacher], distill_cfg, task=task), pairs
    split = sequence_kd_split(words, cache.nbest(teacher, words, settings), method, top_k=top_k)
    if method == "seq_word_kd":
        return build_distiller(student, [teacher], distill_cfg, task=task), split
    return Supervised(student, task=task), split


_BEAM_CACHES: dict[str, TeacherBeamCache] = {}  # one per directory and process: trials of a study share the searches


def sequence_training_split(data, teacher: nn.Module, seq_cfg, *, full_train: bool = False,
                            cache_dir: str | Path | None = None) -> Split:
    """The distilled student's training split for ``distill.sequence`` (``research.config.SequenceKDConfig``):
    the reference pairs for ``targets: reference``, else the teacher's beam outputs over the training
    words (``data``: a ``research.data.g2p.G2PBundle``; ``full_train`` adds the validation words)."""
    if seq_cfg.targets == "reference":
        return data.full_train() if full_train else data.train
    words = data.words(full_train=full_train)
    key = str(cache_dir)
    cache = _BEAM_CACHES.setdefault(key, TeacherBeamCache(cache_dir))
    nbest = cache.nbest(teacher, words, BeamSettings(beam=seq_cfg.beam, length_penalty=seq_cfg.length_penalty))
    method = "seq_kd" if seq_cfg.targets == "beam_top" else "seq_inter"
    return sequence_kd_split(words, nbest, method, top_k=seq_cfg.top_k)
