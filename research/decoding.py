"""Greedy decoding and batched beam search for encoder-decoder models (``research.models.seq2seq``).

A model here has ``encode(src [B, Ls]) -> (memory, src_pad)`` and
``decode(tgt_in [B, t], memory, src_pad) -> logits [B, t, V]``; when it also has
``start(memory, src_pad)``, ``step(state, tokens [N]) -> logits [N, V]`` and
``reorder(state, rows)`` (``research.models.seq2seq``), each step runs on the
newest position only (tested equal to ``decode`` on the whole prefix); token ids
follow ``research.data.g2p``: PAD 0, BOS 1, EOS 2. PAD and BOS are never
generated. Every output ends with EOS:

* ``max_len`` is the most output tokens before EOS. At step ``max_len + 1``
  only EOS is allowed (its log-probability is the model's own, not
  renormalised), so a hypothesis cut at ``max_len`` still carries the
  model's log-probability of stopping there and every score is a true sum of
  token log-probabilities.
* ``Hypothesis.tokens`` are the tokens WITHOUT the final EOS;
  ``Hypothesis.log_prob`` = sum of log p(token | prefix, source) over the
  tokens AND the final EOS (what a teacher-forced forward on BOS + tokens
  gives); ``Hypothesis.score`` = log_prob / (len(tokens) + 1) ** length_penalty.

Length normalisation: score = log_prob / |Y|^alpha with |Y| counting the EOS,
fairseq's ``--lenpen`` rule (``SequenceGenerator``: scores divided by
``(step + 1) ** len_penalty``); alpha = 0 ranks by the raw sum (which favours
short outputs), alpha = 1 by the mean log-probability per token. GNMT's
((5 + |Y|) / 6)^alpha (Wu et al. 2016, eq. 14) is the other common choice and
is not used here.

Beam search (batched over sources, ``beam`` hypotheses each): at every step
the alive hypotheses' log-probabilities are extended by every token and the
best 2 x ``beam`` candidates (by raw sum) of a source are walked in order: a
candidate ending in EOS becomes a finished hypothesis (it is never expanded
again), the others fill the ``beam`` alive slots. A source stops when it has
``beam`` finished hypotheses (fairseq's stopping rule), or at step
``max_len + 1``, where every alive hypothesis is finished by EOS. The
finished hypotheses are returned best first by ``score``. With ``beam`` = 1
this is greedy decoding; with a beam as wide as the number of sequences up
to ``max_len`` it is exhaustive (both tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Hypothesis", "beam_search", "greedy_decode", "length_normalised", "sequence_log_prob"]

PAD, BOS, EOS = 0, 1, 2


@dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]  # output tokens without EOS
    log_prob: float          # sum of the token log-probabilities, the final EOS included
    score: float             # log_prob / (len(tokens) + 1) ** length_penalty


def length_normalised(log_prob: float, n_tokens: int, length_penalty: float) -> float:
    """``log_prob / (n_tokens + 1) ** length_penalty`` (+1: the EOS); see the module docstring."""
    return log_prob / float(n_tokens + 1) ** length_penalty


def _check(max_len: int, beam: int = 1) -> None:
    if not isinstance(max_len, int) or max_len < 0:
        raise ValueError(f"max_len must be a non-negative int, got {max_len!r}")
    if not isinstance(beam, int) or beam < 1:
        raise ValueError(f"beam must be a positive int, got {beam!r}")


class _Stepper:
    """Next-token logits after a growing prefix: the model's incremental ``start``/``step``/``reorder``
    when it has them (``research.models.seq2seq``), else ``decode`` on the whole prefix each step."""

    def __init__(self, model: nn.Module, memory: torch.Tensor, pad: torch.Tensor) -> None:
        self.model, self.memory, self.pad = model, memory, pad
        self.state = model.start(memory, pad) if hasattr(model, "step") else None

    def logits(self, prefix: torch.Tensor) -> torch.Tensor:
        if self.state is not None:
            return self.model.step(self.state, prefix[:, -1])
        return self.model.decode(prefix, self.memory, self.pad)[:, -1]

    def reorder(self, rows: torch.Tensor) -> None:
        if self.state is not None:
            self.model.reorder(self.state, rows)


def _step_log_probs(stepper: _Stepper, prefix: torch.Tensor, force_eos: bool) -> torch.Tensor:
    """log p(next token) [N, V] after ``prefix`` [N, t]; PAD and BOS masked out, only EOS at the last step."""
    logp = torch.log_softmax(stepper.logits(prefix).float(), dim=-1)
    blocked = torch.zeros(logp.shape[-1], dtype=torch.bool, device=logp.device)
    if force_eos:
        blocked[:] = True
        blocked[EOS] = False
    else:
        blocked[[PAD, BOS]] = True
    return logp.masked_fill(blocked, float("-inf"))


@torch.no_grad()
def greedy_decode(model: nn.Module, src: torch.Tensor, *, max_len: int) -> list[Hypothesis]:
    """The most probable token at every step, for each row of ``src`` [B, Ls]; one
    :class:`Hypothesis` per row (score with length penalty 0, i.e. = log_prob)."""
    _check(max_len)
    was_training = model.training
    model.eval()
    try:
        stepper = _Stepper(model, *model.encode(src))
        b = src.shape[0]
        prefix = torch.full((b, 1), BOS, dtype=torch.long, device=src.device)
        total = torch.zeros(b, dtype=torch.float64, device=src.device)
        done = torch.zeros(b, dtype=torch.bool, device=src.device)
        out: list[list[int]] = [[] for _ in range(b)]
        for step in range(max_len + 1):
            logp = _step_log_probs(stepper, prefix, force_eos=step == max_len)
            best, tok = logp.max(-1)
            total += torch.where(done, torch.zeros_like(total), best.double())
            for i in torch.nonzero(~done & (tok != EOS)).flatten().tolist():
                out[i].append(int(tok[i]))
            done |= tok == EOS
            if bool(done.all()):
                break
            prefix = torch.cat([prefix, torch.where(done, torch.full_like(tok, EOS), tok)[:, None]], dim=1)
        return [Hypothesis(tuple(o), float(t), float(t)) for o, t in zip(out, total.tolist())]
    finally:
        model.train(was_training)


@torch.no_grad()
def beam_search(model: nn.Module, src: torch.Tensor, *, beam: int, max_len: int, length_penalty: float = 1.0,
                n_best: int | None = None) -> list[list[Hypothesis]]:
    """Batched beam search over the rows of ``src`` [B, Ls] (see the module docstring).

    Returns, per row, up to ``n_best`` (default ``beam``) finished hypotheses, best ``score`` first.
    """
    _check(max_len, beam)
    n_best = beam if n_best is None else n_best
    if not 1 <= n_best <= beam:
        raise ValueError(f"n_best must be in [1, beam={beam}], got {n_best}")
    if length_penalty < 0:
        raise ValueError(f"length_penalty must be >= 0, got {length_penalty}")
    was_training = model.training
    model.eval()
    try:
        b, k = src.shape[0], beam
        dev = src.device
        memory, pad = model.encode(src)
        memory, pad = memory.repeat_interleave(k, 0), pad.repeat_interleave(k, 0)  # row i*k + j: source i, slot j
        stepper = _Stepper(model, memory, pad)
        prefix = torch.full((b * k, 1), BOS, dtype=torch.long, device=dev)
        # Only slot 0 is alive at the start (the others would duplicate it).
        alive = torch.full((b, k), float("-inf"), dtype=torch.float64, device=dev)
        alive[:, 0] = 0.0
        finished: list[list[Hypothesis]] = [[] for _ in range(b)]
        n_finished = torch.zeros(b, dtype=torch.long, device=dev)
        done = torch.zeros(b, dtype=torch.bool, device=dev)
        base = torch.arange(b, device=dev)[:, None] * k
        for step in range(max_len + 1):
            logp = _step_log_probs(stepper, prefix, force_eos=step == max_len).double()
            v = logp.shape[-1]
            cand = (alive[:, :, None] + logp.view(b, k, v)).view(b, k * v)
            top_scores, top_idx = cand.topk(min(2 * k, k * v), dim=1)  # [B, 2k], best first
            slot, tok = top_idx // v, top_idx % v
            valid = (top_scores > float("-inf")) & ~done[:, None]
            is_eos = tok == EOS
            grows = valid & ~is_eos
            # Walking the candidates in order, one is taken while fewer than k alive ones came before it
            # (an EOS candidate after the k-th alive one is never reached).
            before = torch.cumsum(grows.long(), dim=1) - grows.long()
            taken = valid & (before < k)
            ends, keeps = taken & is_eos, taken & ~is_eos
            for i, j in ends.nonzero().tolist():  # finished hypotheses: few per step
                row = i * k + int(slot[i, j])
                toks = tuple(prefix[row, 1:].tolist())
                sc = float(top_scores[i, j])
                finished[i].append(Hypothesis(toks, sc, length_normalised(sc, len(toks), length_penalty)))
            n_finished += ends.sum(1)
            # The kept candidates, in order, fill the k slots; unfilled slots get score -inf.
            order = torch.argsort((~keeps).int(), dim=1, stable=True)[:, :k]  # [B, k]
            kept = keeps.gather(1, order)
            rows = (base + slot.gather(1, order)).view(-1)
            new_tok = torch.where(kept, tok.gather(1, order), torch.full_like(order, EOS)).view(-1, 1)
            alive = torch.where(kept, top_scores.gather(1, order), torch.full_like(alive, float("-inf")))
            prefix = torch.cat([prefix[rows], new_tok], dim=1)
            stepper.reorder(rows)
            done |= (n_finished >= k) | ~kept.any(1)
            if bool(done.all()):
                break
        return [sorted(f, key=lambda h: -h.score)[:n_best] for f in finished]
    finally:
        model.train(was_training)


@torch.no_grad()
def sequence_log_prob(model: nn.Module, src: torch.Tensor, tokens: list[tuple[int, ...]] | list[list[int]]) -> torch.Tensor:
    """Teacher-forced sum of log p(token) over ``tokens`` + EOS for each row of ``src`` [B, Ls]: [B] float64.

    The independent check of a search's ``log_prob``: one forward on BOS + tokens."""
    if len(tokens) != src.shape[0]:
        raise ValueError(f"{len(tokens)} token sequences for {src.shape[0]} sources")
    width = max(len(t) for t in tokens) + 1
    tgt = torch.full((len(tokens), width), PAD, dtype=torch.long, device=src.device)
    for i, t in enumerate(tokens):
        tgt[i, : len(t) + 1] = torch.tensor([*t, EOS], dtype=torch.long)
    tgt_in = torch.cat([torch.full_like(tgt[:, :1], BOS), tgt[:, :-1]], dim=1)
    was_training = model.training
    model.eval()
    try:
        logp = torch.log_softmax(model(src, tgt_in).double(), dim=-1)
    finally:
        model.train(was_training)
    picked = logp.gather(-1, tgt[:, :, None]).squeeze(-1)
    return picked.masked_fill(tgt == PAD, 0.0).sum(-1)
