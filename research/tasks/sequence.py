"""``g2p``: sequence-to-sequence (grapheme-to-phoneme), on the same loop, Learners and objectives.

A batch is ``(x, y)`` from a ``research.data.Split`` built by ``research.data.g2p``:

* x int64 [B, Ls]: source token ids, PAD (0) right-padded;
* y int64 [B, Lt]: target ids followed by EOS (2), PAD-padded (training pairs), or
  [B, R, Lt]: R references per source, all-PAD rows for missing ones (evaluation splits;
  teacher forcing and the token-level terms use the first reference).

:meth:`forward` is teacher forcing: the model gets (x, BOS + y shifted right) and returns
logits [B, Lt, V]; ``forward(model, x)`` without targets scores the first output token only
([B, 1, V]: latency, FLOPs and export of one step). :meth:`loss_rows` hands the non-PAD target
positions to the losses as rows [N, V] with their labels [N], so every registered objective
works on sequences unchanged. For ``kd`` this is word-level KD (Kim & Rush 2016, eq. 5 with
Hinton's temperature): per real target token, alpha * CE + (1 - alpha) * T^2 * KL(p_T || q_T),
KL summed over the vocabulary, both terms averaged over the real tokens of the batch
(``batchmean`` over rows), padding never entering a loss.

Metrics (:mod:`research.g2p_metrics`): ``wer`` and ``per`` of the model's GREEDY output
(``research.decoding.greedy_decode``, at most ``source width + 8`` output tokens) against all
references; ``nll``: teacher-forced mean NLL per real token of the first reference;
``decode_words_per_s`` (greedy decoding of the whole split in batches of 256) and
``decode_latency_b1_ms`` (median over the first 20 words decoded one at a time), on the
model's device with the process's threads (the run's ``latency_b1_ms`` times one decoder
step on the task's example input, not a whole word). With
the teachers' prediction (teacher-forced logits as :meth:`predict` gives them):
``agreement`` (share of real tokens whose argmax agrees) and ``kl_to_teacher`` (mean KL per
real token, T = 1). Beam-search evaluation is :func:`decode_metrics` with ``beam`` > 1.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from research.decoding import beam_search, greedy_decode
from research.g2p_metrics import error_rates
from research.tasks import Task, Toy, register_task

PAD, BOS, EOS = 0, 1, 2
EXTRA_OUTPUT = 8  # outputs may be longer than the source by this many tokens (G2P: 'x' -> K S)

__all__ = ["Seq2Seq", "decode_metrics", "first_reference", "references", "shift_right"]


def first_reference(y: torch.Tensor) -> torch.Tensor:
    """Targets [B, Lt] from [B, Lt] or [B, R, Lt] (the first reference)."""
    if y.dim() == 3:
        return y[:, 0]
    if y.dim() != 2:
        raise ValueError(f"sequence targets must be [B, Lt] or [B, R, Lt], got {tuple(y.shape)}")
    return y


def shift_right(y: torch.Tensor) -> torch.Tensor:
    """Decoder input for teacher forcing: BOS followed by ``y`` [B, Lt] without its last column."""
    return torch.cat([torch.full_like(y[:, :1], BOS), y[:, :-1]], dim=1)


def references(y: torch.Tensor) -> list[list[tuple[int, ...]]]:
    """Per row of ``y`` ([B, Lt] or [B, R, Lt]) its references as token tuples without EOS/PAD."""
    refs3 = y[:, None] if y.dim() == 2 else y
    out = []
    for row in refs3.tolist():
        word = []
        for r in row:
            if r[0] == PAD:
                continue
            word.append(tuple(t for t in r[: r.index(EOS)] if t != PAD) if EOS in r else tuple(t for t in r if t != PAD))
        out.append(word)
    return out


def _max_output(model: nn.Module, x: torch.Tensor) -> int:
    limit = x.shape[1] + EXTRA_OUTPUT
    table = getattr(model, "max_len", None)  # the decoder's position table: BOS + max_len tokens must fit
    return min(limit, table - 1) if table is not None else limit


@torch.no_grad()
def decode_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, beam: int = 1, length_penalty: float = 1.0,
                   batch_size: int = 256, max_len: int | None = None) -> dict[str, float]:
    """WER and PER of the model's output (greedy when ``beam`` = 1, else the best beam hypothesis)."""
    max_len = _max_output(model, x) if max_len is None else max_len
    device = next(model.parameters()).device
    hyps: list[tuple[int, ...]] = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(device)
        if beam == 1:
            hyps += [h.tokens for h in greedy_decode(model, xb, max_len=max_len)]
        else:
            hyps += [b[0].tokens for b in beam_search(model, xb, beam=beam, max_len=max_len, length_penalty=length_penalty)]
    return error_rates(hyps, references(y))


@register_task("g2p")
class Seq2Seq(Task):
    validation_metric = "wer"
    direction = "minimize"
    epoch_metric_names = ("wer", "per")
    metric_names = ("wer", "per", "nll", "decode_words_per_s", "decode_latency_b1_ms")
    latency_words = 20  # words decoded one at a time for the batch-1 latency
    teacher_metric_names = ("agreement", "kl_to_teacher")

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            return model(x)
        return model(x, shift_right(first_reference(y)))

    def loss_rows(self, logits: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if y is None:
            return logits.reshape(-1, logits.shape[-1]), None
        y = first_reference(y)
        if logits.shape[:2] != y.shape:
            raise ValueError(f"logits {tuple(logits.shape)} do not match targets {tuple(y.shape)}")
        real = y != PAD
        return logits[real], y[real]

    def predict(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, batch_size: int = 1024,
                device: torch.device | str | None = None) -> torch.Tensor:
        """Teacher-forced logits [N, Lt, V] on the first reference (float32, CPU); [N, 1, V] without ``y``."""
        del device  # each batch goes where the model is
        where = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = [self.forward(model, x[i : i + batch_size].to(where),
                                    None if y is None else y[i : i + batch_size].to(where)).float().cpu()
                       for i in range(0, len(x), batch_size)]
        finally:
            model.train(was_training)
        return torch.cat(out)

    def epoch_metrics(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                      device: torch.device | str | None = None) -> dict[str, float]:
        return decode_metrics(model, x, y)  # the decoders restore the model's mode

    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, teacher_logits: torch.Tensor | None = None,
                 batch_size: int = 1024, ece_bins: int = 15) -> dict[str, float]:
        t0 = time.perf_counter()
        out = self.epoch_metrics(model, x, y)
        out["decode_words_per_s"] = len(x) / (time.perf_counter() - t0)  # greedy, batches of 256, this process's threads
        max_len = _max_output(model, x)
        times = []
        for i in range(min(self.latency_words, len(x))):
            t0 = time.perf_counter()
            greedy_decode(model, x[i : i + 1].to(next(model.parameters()).device), max_len=max_len)
            times.append(time.perf_counter() - t0)
        out["decode_latency_b1_ms"] = 1000.0 * statistics.median(times)
        logits = self.predict(model, x, y, batch_size=batch_size)
        rows, labels = self.loss_rows(logits, y)
        out["nll"] = float(F.cross_entropy(rows, labels))
        if teacher_logits is not None:
            t_rows, _ = self.loss_rows(teacher_logits.float(), y)
            out["agreement"] = float(rows.argmax(1).eq(t_rows.argmax(1)).float().mean())
            out["kl_to_teacher"] = float(F.kl_div(rows.log_softmax(1), t_rows.log_softmax(1), reduction="batchmean",
                                                  log_target=True))
        return out

    def example_input(self, input_shape: Sequence[int], batch_size: int = 1) -> torch.Tensor:
        """Source ids [batch_size, input_shape[0]]: real tokens (id 3) everywhere, no padding."""
        return torch.full((batch_size, *input_shape), 3, dtype=torch.int64)

    def toy(self, *, seed: int = 0, n: int = 16) -> Toy:
        from research.models import build_model

        g = torch.Generator().manual_seed(seed)
        src_vocab, tgt_vocab, ls, lt = 9, 7, 6, 5
        x = torch.randint(3, src_vocab, (n, ls), generator=g)
        y = torch.randint(3, tgt_vocab, (n, lt), generator=g)
        src_len = torch.randint(1, ls + 1, (n,), generator=g)
        tgt_len = torch.randint(0, lt, (n,), generator=g)  # tokens before EOS
        for i in range(n):
            x[i, src_len[i]:] = PAD
            y[i, tgt_len[i]] = EOS
            y[i, tgt_len[i] + 1:] = PAD
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model("transformer_seq2seq", input_shape=(ls,), num_classes=tgt_vocab, src_vocab=src_vocab,
                                layers=1, d_model=16, heads=2, ff=32, dropout=0.0, max_len=16)
        return Toy(model, x, y, (ls,), tgt_vocab)
