"""``transformer_seq2seq``: an encoder-decoder Transformer over token ids (grapheme-to-phoneme).

    build_model("transformer_seq2seq", input_shape=(max_src_len,), num_classes=tgt_vocab,
                src_vocab=32, layers=3, d_model=256, heads=4)

Pre-LN layers (``norm_first=True``: trains without a warm-up at these sizes) from
``torch.nn.TransformerEncoderLayer`` / ``TransformerDecoderLayer``, batch first, learned
absolute positions, a final LayerNorm after each stack, an untied output projection.
Token id 0 is padding in both vocabularies and id 1 is BOS (``research.data.g2p``).

``forward(src [B, Ls], tgt_in [B, Lt]) -> logits [B, Lt, V]``: teacher forcing, ``tgt_in`` is
BOS followed by the target shifted right; position t sees ``tgt_in[:, :t+1]`` only (causal
mask) and the non-PAD source tokens. ``forward(src)`` alone scores the first output token
(``tgt_in`` = BOS): [B, 1, V], what the task's latency and export checks call; decoding
lives in :mod:`research.decoding`, which uses :meth:`encode` and :meth:`decode`.

Parameters (d = d_model, f = ff, P = max_len, Vs/Vt = vocabularies, n = layers, m = decoder layers):

    (Vs + Vt + 2P) d                       embeddings and positions
  + n (4d^2 + 4d + 2df + f + d + 4d)       encoder layers (self-attention, feed-forward, 2 LayerNorms)
  + m (8d^2 + 8d + 2df + f + d + 6d)       decoder layers (+ cross-attention, 3 LayerNorms)
  + 4d                                     the two final LayerNorms
  + d Vt + Vt                              output projection
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from research.models import register_model
from research.models.mlp import check_dropout, check_positive_int

PAD_ID, BOS_ID = 0, 1  # research.data.g2p's PAD and BOS (not imported: models do not depend on data)


class Seq2SeqTransformer(nn.Module):
    def __init__(self, src_vocab: int, tgt_vocab: int, *, d_model: int, heads: int, layers: int, decoder_layers: int,
                 ff: int, dropout: float, max_len: int) -> None:
        super().__init__()
        self.max_len = max_len
        self.src_embed = nn.Embedding(src_vocab, d_model, padding_idx=PAD_ID)
        self.tgt_embed = nn.Embedding(tgt_vocab, d_model, padding_idx=PAD_ID)
        self.src_pos = nn.Embedding(max_len, d_model)
        self.tgt_pos = nn.Embedding(max_len, d_model)
        enc = nn.TransformerEncoderLayer(d_model, heads, ff, dropout, batch_first=True, norm_first=True)
        dec = nn.TransformerDecoderLayer(d_model, heads, ff, dropout, batch_first=True, norm_first=True)
        # enable_nested_tensor=False: the nested-tensor fast path is skipped with norm_first anyway (and warns).
        self.encoder = nn.TransformerEncoder(enc, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec, decoder_layers, norm=nn.LayerNorm(d_model))
        self.out = nn.Linear(d_model, tgt_vocab)

    def _positions(self, length: int, device: torch.device) -> Tensor:
        return torch.arange(length, device=device)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """(memory [B, Ls, d], source padding mask [B, Ls], True at PAD)."""
        if src.shape[1] > self.max_len:
            raise ValueError(f"source length {src.shape[1]} exceeds max_len {self.max_len}")
        pad = src == PAD_ID
        h = self.src_embed(src) + self.src_pos(self._positions(src.shape[1], src.device))
        return self.encoder(h, src_key_padding_mask=pad), pad

    def decode(self, tgt_in: Tensor, memory: Tensor, src_pad: Tensor) -> Tensor:
        """Logits [B, Lt, V] of every position of ``tgt_in`` [B, Lt] (causal)."""
        lt = tgt_in.shape[1]
        if lt > self.max_len:
            raise ValueError(f"target length {lt} exceeds max_len {self.max_len}")
        h = self.tgt_embed(tgt_in) + self.tgt_pos(self._positions(lt, tgt_in.device))
        causal = nn.Transformer.generate_square_subsequent_mask(lt, device=tgt_in.device, dtype=h.dtype)
        h = self.decoder(h, memory, tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=src_pad)
        return self.out(h)

    def start(self, memory: Tensor, src_pad: Tensor) -> dict[str, Any]:
        """Incremental decoding state for :meth:`step` (no token decoded yet)."""
        return {"memory": memory, "pad": src_pad, "inputs": [None] * len(self.decoder.layers), "t": 0}

    def step(self, state: dict[str, Any], tokens: Tensor) -> Tensor:
        """Logits [N, V] of the next position after feeding ``tokens`` [N] (BOS first), in eval mode.

        The same function as :meth:`decode` on the whole prefix, computed for the last position
        only: each layer keeps its inputs at the earlier positions (causal attention never changes
        them), so a step costs one position instead of the whole prefix. Pre-LN layers, as built."""
        t = state["t"]
        if t >= self.max_len:
            raise ValueError(f"target length {t + 1} exceeds max_len {self.max_len}")
        x = self.tgt_embed(tokens)[:, None] + self.tgt_pos.weight[t]
        memory, pad = state["memory"], state["pad"]
        for i, layer in enumerate(self.decoder.layers):
            seen = x if state["inputs"][i] is None else torch.cat([state["inputs"][i], x], dim=1)
            state["inputs"][i] = seen
            a = layer.norm1(seen)
            x = x + layer.self_attn(a[:, -1:], a, a, need_weights=False)[0]
            y = layer.norm2(x)
            x = x + layer.multihead_attn(y, memory, memory, key_padding_mask=pad, need_weights=False)[0]
            x = x + layer.linear2(layer.activation(layer.linear1(layer.norm3(x))))
        state["t"] = t + 1
        return self.out(self.decoder.norm(x))[:, 0]

    @staticmethod
    def reorder(state: dict[str, Any], rows: Tensor) -> None:
        """Keep rows ``rows`` of the state's per-row caches (a beam's surviving prefixes); the
        memory is not reordered, so ``rows`` must stay within each source's block of rows."""
        state["inputs"] = [None if c is None else c[rows] for c in state["inputs"]]

    def forward(self, src: Tensor, tgt_in: Tensor | None = None) -> Tensor:
        if tgt_in is None:
            tgt_in = torch.full((src.shape[0], 1), BOS_ID, dtype=src.dtype, device=src.device)
        memory, pad = self.encode(src)
        return self.decode(tgt_in, memory, pad)


@register_model("transformer_seq2seq")
def transformer_seq2seq(input_shape: tuple[int, ...], num_classes: int, src_vocab: int, layers: int = 3,
                        d_model: int = 256, heads: int = 4, ff: int | None = None, decoder_layers: int | None = None,
                        dropout: float = 0.1, max_len: int = 64) -> nn.Module:
    """Encoder-decoder Transformer; ``input_shape`` = (longest source,), ``num_classes`` = target
    vocabulary size. ``ff`` defaults to 4 * d_model, ``decoder_layers`` to ``layers``."""
    name = "transformer_seq2seq"
    if len(input_shape) != 1:
        raise ValueError(f"model {name!r}: input_shape must be (source length,), got {input_shape!r}")
    args: dict[str, Any] = {
        "src_vocab": check_positive_int(name, src_vocab, "src_vocab"),
        "layers": check_positive_int(name, layers, "layers"),
        "d_model": check_positive_int(name, d_model, "d_model"),
        "heads": check_positive_int(name, heads, "heads"),
        "max_len": check_positive_int(name, max_len, "max_len"),
    }
    ff = check_positive_int(name, 4 * d_model if ff is None else ff, "ff")
    decoder_layers = check_positive_int(name, layers if decoder_layers is None else decoder_layers, "decoder_layers")
    if d_model % heads:
        raise ValueError(f"model {name!r}: d_model {d_model} is not divisible by heads {heads}")
    if input_shape[0] > max_len:
        raise ValueError(f"model {name!r}: sources of {input_shape[0]} tokens exceed max_len {max_len}")
    return Seq2SeqTransformer(args["src_vocab"], num_classes, d_model=d_model, heads=heads, layers=layers,
                              decoder_layers=decoder_layers, ff=ff, dropout=check_dropout(name, dropout), max_len=max_len)
