"""Grapheme-to-phoneme: CMUdict data, WER/PER, the seq2seq Transformer, greedy and beam decoding.

Expected values are written by hand (dictionary entries, error rates, parameter formulas)
or come from an independent computation (a teacher-forced forward, an exhaustive enumeration).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from research.data.g2p import BOS, EOS, PAD, Vocab, lengths, load_g2p, pronunciations
from research.decoding import beam_search, greedy_decode, length_normalised, sequence_log_prob
from research.g2p_metrics import closest_reference, edit_distance, error_rates, phoneme_error_rate, word_error_rate
from research.models import build_model, count_parameters

# ---------------------------------------------------------------- data


def test_dictionary_entries_with_and_without_stress():
    assert pronunciations(False)["tomato"] == [("T", "AH", "M", "EY", "T", "OW"), ("T", "AH", "M", "AA", "T", "OW")]
    assert pronunciations(True)["tomato"] == [("T", "AH0", "M", "EY1", "T", "OW2"), ("T", "AH0", "M", "AA1", "T", "OW2")]
    # the dictionary lists "mormonism" twice with the same phonemes: kept once
    assert len(pronunciations(True)["mormonism"]) == 1
    assert len(pronunciations(False)) == 126052


def test_vocab_ids_and_decode():
    v = Vocab(("AA", "B"))
    assert len(v) == 5 and v.encode(["B", "AA"]) == [4, 3]
    assert v.decode([BOS, 4, 3, EOS, 4, PAD]) == ["B", "AA"]  # stops at EOS
    with pytest.raises(KeyError, match="'ZZ'"):
        v.encode(["ZZ"])
    with pytest.raises(ValueError):
        Vocab(("<eos>",))


@pytest.fixture(scope="module")
def data300():
    return load_g2p(max_words=300, seed=0)


def test_split_by_word_with_all_references(data300):
    d = data300
    words = d.words
    # 300 words: test round(0.1 * 300) = 30, val round(0.05 * 300) = 15, train the remaining 255
    assert (len(words["test"]), len(words["val"]), len(words["train"])) == (30, 15, 255)
    assert not set(words["train"]) & set(words["val"]) and not set(words["train"]) & set(words["test"])
    assert not set(words["val"]) & set(words["test"])
    prons = pronunciations(False)
    assert len(d.train) == sum(len(prons[w]) for w in words["train"])  # one row per (word, pronunciation)
    for split, name in ((d.val, "val"), (d.test, "test"), (d.train_words, "train")):
        assert len(split) == len(words[name])
        for i, w in enumerate(words[name]):
            assert "".join(d.src_vocab.decode(split.x[i])) == w
            refs = [tuple(d.tgt_vocab.decode(r)) for r in split.y[i] if r[0] != PAD]
            assert refs == prons[w]
    # pairs: every pronunciation of every training word, phonemes then EOS then PAD
    pairs = {("".join(d.src_vocab.decode(x)), tuple(d.tgt_vocab.decode(y))) for x, y in zip(d.train.x, d.train.y)}
    assert pairs == {(w, p) for w in words["train"] for p in prons[w]}
    n = lengths(d.train.y)
    for row, k in zip(d.train.y, n.tolist()):
        assert row[k - 1] == EOS and (row[k:] == PAD).all() and (row[: k - 1] > EOS).all()


def test_split_is_seeded_and_subsampled_the_same_way():
    a, b, c = load_g2p(max_words=60, seed=3), load_g2p(max_words=60, seed=3), load_g2p(max_words=60, seed=4)
    assert a.words == b.words and a.fingerprint() == b.fingerprint()
    assert a.words != c.words and a.fingerprint() != c.fingerprint()
    assert torch.equal(a.train.x, b.train.x)
    stressed = load_g2p(max_words=60, seed=3, stress=True)
    assert stressed.words == a.words and len(stressed.tgt_vocab) > len(a.tgt_vocab)
    assert len(a.tgt_vocab) == 3 + 39  # ARPAbet without stress: 39 phonemes


@pytest.mark.parametrize("kwargs", [{"val_fraction": 0.0}, {"test_fraction": 1.0}, {"val_fraction": 0.5, "test_fraction": 0.5},
                                    {"max_words": 2}])
def test_bad_split_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        load_g2p(**kwargs)


# ---------------------------------------------------------------- metrics


def test_error_rates_by_hand():
    hyps = [["K", "AE", "T"], ["D", "AO", "G"], ["B"], ["R", "EH", "D"]]
    refs = [[["K", "AE", "T"]],
            [["D", "AA", "G"], ["D", "AO", "G", "Z"]],  # distance 1 to both: the first (3 phonemes) is taken
            [["B", "IY"]],
            [["R", "IY", "D"], ["R", "EH", "D"]]]  # equals the second reference: right
    assert word_error_rate(hyps, refs) == pytest.approx(2 / 4)
    # distances 0, 1, 1, 0 over reference lengths 3, 3, 2, 3
    assert phoneme_error_rate(hyps, refs) == pytest.approx(2 / 11)
    assert error_rates(hyps, refs) == {"wer": pytest.approx(0.5), "per": pytest.approx(2 / 11)}
    assert closest_reference(["D", "AO", "G"], refs[1]) == (0, 1)


def test_edit_distance_is_over_symbols_not_characters():
    assert edit_distance(["AA", "B"], ["A", "AB"]) == 2
    assert edit_distance([], ["K", "AE", "T"]) == 3
    assert edit_distance(["K", "AE", "T"], ["AE", "T", "S"]) == 2  # delete K, insert S
    assert phoneme_error_rate([["K", "AE", "T", "S", "S"]], [[["K", "AE"]]]) == pytest.approx(3 / 2)  # PER may exceed 1


def test_metrics_refuse_mismatched_inputs():
    with pytest.raises(ValueError, match="2 hypotheses for 1 words"):
        word_error_rate([["A"], ["B"]], [[["A"]]])
    with pytest.raises(ValueError):
        closest_reference(["A"], [])


# ---------------------------------------------------------------- models


def _expected_params(vs: int, vt: int, d: int, f: int, p: int, n: int, m: int) -> int:
    enc = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d
    dec = 8 * d * d + 8 * d + 2 * d * f + f + d + 6 * d
    return (vs + vt + 2 * p) * d + n * enc + m * dec + 4 * d + d * vt + vt


@pytest.mark.parametrize(("layers", "d", "heads"), [(3, 256, 4), (1, 64, 2), (2, 128, 4)])
def test_transformer_parameter_counts(layers, d, heads):
    model = build_model("transformer_seq2seq", input_shape=(20,), num_classes=42, src_vocab=32, layers=layers, d_model=d,
                        heads=heads)
    assert count_parameters(model) == _expected_params(32, 42, d, 4 * d, 64, layers, layers)


def test_transformer_parameter_count_one_layer_by_hand():
    # d=64, ff=256, 64 positions, vocabularies 31 and 42, one layer each:
    # embeddings (31 + 42 + 128) * 64 = 12,864; encoder layer 49,984; decoder layer 66,752;
    # final norms 256; output 64 * 42 + 42 = 2,730 -> 132,586
    model = build_model("transformer_seq2seq", input_shape=(10,), num_classes=42, src_vocab=31, layers=1, d_model=64, heads=2)
    assert count_parameters(model) == 132_586


def test_transformer_shapes_and_bad_args():
    torch.manual_seed(0)
    model = build_model("transformer_seq2seq", input_shape=(7,), num_classes=9, src_vocab=11, layers=1, d_model=16, heads=2,
                        decoder_layers=2, ff=32).eval()
    src = torch.randint(3, 11, (4, 7))
    assert model(src, torch.full((4, 5), BOS)).shape == (4, 5, 9)
    assert model(src).shape == (4, 1, 9)
    with pytest.raises(ValueError, match="not divisible"):
        build_model("transformer_seq2seq", input_shape=(7,), num_classes=9, src_vocab=11, d_model=10, heads=4)
    with pytest.raises(ValueError, match="max_len"):
        build_model("transformer_seq2seq", input_shape=(70,), num_classes=9, src_vocab=11)


def test_padding_does_not_change_the_logits():
    torch.manual_seed(0)
    model = build_model("transformer_seq2seq", input_shape=(8,), num_classes=9, src_vocab=11, layers=1, d_model=16,
                        heads=2, dropout=0.0).eval()
    src = torch.tensor([[5, 6, 7]])
    padded = torch.tensor([[5, 6, 7, PAD, PAD, PAD]])
    tgt = torch.tensor([[BOS, 4, 5]])
    assert torch.allclose(model(src, tgt), model(padded, tgt), atol=1e-5)


# ---------------------------------------------------------------- decoding


def _tiny(seed: int = 0, vt: int = 6, sharpen: float = 4.0):
    """A random tiny model over 3 real target tokens (ids 3, 4, 5) with peaked outputs (no near-ties)."""
    torch.manual_seed(seed)
    model = build_model("transformer_seq2seq", input_shape=(6,), num_classes=vt, src_vocab=9, layers=1, d_model=16,
                        heads=2, dropout=0.0).eval()
    with torch.no_grad():
        model.out.weight.mul_(sharpen)
    return model


SRC = torch.tensor([[3, 4, 5, 6, 7, 8], [4, 4, 5, PAD, PAD, PAD], [8, PAD, PAD, PAD, PAD, PAD], [5, 3, 7, 6, PAD, PAD]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_of_width_one_is_greedy(seed):
    model = _tiny(seed)
    greedy = greedy_decode(model, SRC, max_len=5)
    beam = beam_search(model, SRC, beam=1, max_len=5, length_penalty=0.0)
    assert [b[0].tokens for b in beam] == [g.tokens for g in greedy]
    assert [b[0].log_prob for b in beam] == pytest.approx([g.log_prob for g in greedy], abs=1e-5)


@pytest.mark.parametrize(("seed", "length_penalty"), [(0, 0.0), (1, 0.0), (2, 1.0), (3, 0.6)])
def test_a_beam_as_wide_as_all_sequences_finds_the_exhaustive_best(seed, length_penalty):
    model = _tiny(seed, sharpen=1.5)
    max_len = 3
    every = [seq for n in range(max_len + 1) for seq in itertools.product((3, 4, 5), repeat=n)]
    assert len(every) == 1 + 3 + 9 + 27
    for i in range(len(SRC)):
        src = SRC[i : i + 1]
        scores = sequence_log_prob(model, src.expand(len(every), -1), every)  # teacher-forced, independent of the search
        normalised = [length_normalised(float(s), len(seq), length_penalty) for s, seq in zip(scores, every)]
        best = every[max(range(len(every)), key=normalised.__getitem__)]
        hyps = beam_search(model, src, beam=len(every), max_len=max_len, length_penalty=length_penalty)[0]
        assert len(hyps) == len(every)  # every sequence was finished once
        assert hyps[0].tokens == best
        assert hyps[0].score == pytest.approx(max(normalised), abs=1e-5)


def test_hypothesis_scores_are_sums_of_token_log_probs():
    model = _tiny(0, vt=9, sharpen=1.0)
    results = beam_search(model, SRC, beam=4, max_len=6, length_penalty=1.0)
    for i, hyps in enumerate(results):
        assert len(hyps) == 4 and [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        forced = sequence_log_prob(model, SRC[i : i + 1].expand(len(hyps), -1), [h.tokens for h in hyps])
        assert [h.log_prob for h in hyps] == pytest.approx(forced.tolist(), abs=1e-4)
        assert [h.score for h in hyps] == pytest.approx([h.log_prob / (len(h.tokens) + 1) for h in hyps])
        assert all(len(h.tokens) <= 6 and EOS not in h.tokens and PAD not in h.tokens and BOS not in h.tokens for h in hyps)


@pytest.mark.parametrize("beam", [1, 3])
def test_a_padded_batch_decodes_as_one_row_at_a_time(beam):
    model = _tiny(1, vt=9, sharpen=2.0)
    batch = beam_search(model, SRC, beam=beam, max_len=7)
    for i in range(len(SRC)):
        n = int((SRC[i] != PAD).sum())
        alone = beam_search(model, SRC[i : i + 1, :n], beam=beam, max_len=7)[0]
        assert [h.tokens for h in batch[i]] == [h.tokens for h in alone]
        assert [h.score for h in batch[i]] == pytest.approx([h.score for h in alone], abs=1e-5)
    greedy = greedy_decode(model, SRC, max_len=7)
    for i in range(len(SRC)):
        n = int((SRC[i] != PAD).sum())
        assert greedy[i].tokens == greedy_decode(model, SRC[i : i + 1, :n], max_len=7)[0].tokens


def test_incremental_steps_equal_the_whole_prefix_decode():
    model = _tiny(2, vt=9, sharpen=1.0)
    memory, pad = model.encode(SRC)
    tgt = torch.tensor([[BOS, 3, 4, 5, 6], [BOS, 5, 5, 3, 8], [BOS, 8, 7, 6, 5], [BOS, 4, 3, 4, 3]])
    with torch.no_grad():
        full = model.decode(tgt, memory, pad)  # [4, 5, 9]
        state = model.start(memory, pad)
        steps = [model.step(state, tgt[:, t]) for t in range(tgt.shape[1])]
        assert torch.allclose(torch.stack(steps, 1), full, atol=1e-5)
        # reordering the rows (a beam keeping prefixes 2, 2, 0, 1) keeps each row's own history
        state = model.start(memory, pad)
        for t in range(3):
            model.step(state, tgt[:, t])
        rows = torch.tensor([2, 2, 0, 1])
        model.reorder(state, rows)
        swapped = model.step(state, tgt[rows, 3])
        expected = model.decode(tgt[rows, :4], memory, pad)[:, -1]  # same sources: the memory rows are not reordered
        assert not torch.allclose(swapped, model.decode(tgt[:, :4], memory, pad)[:, -1], atol=1e-3)
    # rows 2 and 0 see other sources' memory here, so compare against decode with the same memory rows
    assert torch.allclose(swapped, expected, atol=1e-5)


def test_max_len_cuts_and_closes_with_eos():
    model = _tiny(0, vt=9, sharpen=1.0)
    with torch.no_grad():  # EOS made very unlikely: every output runs to max_len
        model.out.bias[EOS] = -50.0
    for h in greedy_decode(model, SRC, max_len=2):
        assert len(h.tokens) == 2 and h.log_prob < -40  # the forced EOS's log-probability is counted
    for hyps in beam_search(model, SRC, beam=2, max_len=2):
        assert all(len(h.tokens) == 2 for h in hyps)
    assert [h.tokens for h in greedy_decode(model, SRC, max_len=0)] == [()] * len(SRC)
    with pytest.raises(ValueError):
        beam_search(model, SRC, beam=0, max_len=2)
    with pytest.raises(ValueError):
        beam_search(model, SRC, beam=2, max_len=2, n_best=3)
