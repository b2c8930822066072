"""A seq2seq student exported to ONNX and decoded greedily in ONNX Runtime gives the PyTorch outputs."""

from __future__ import annotations

import torch

from research.compress.onnx_seq2seq import OrtGreedy, export_seq2seq_onnx
from research.data.g2p import PAD
from research.decoding import greedy_decode
from research.models import build_model


def test_onnx_runtime_greedy_equals_pytorch_greedy_on_other_lengths():
    torch.manual_seed(3)
    model = build_model("transformer_seq2seq", input_shape=(9,), num_classes=10, src_vocab=9, layers=1, d_model=16, heads=2,
                        dropout=0.0).eval()
    with torch.no_grad():
        model.out.weight.mul_(3.0)  # peaked outputs: no near-ties between the two runtimes
    exported = export_seq2seq_onnx(model)
    assert exported.size_bytes > 0
    ort = OrtGreedy(exported)
    # other batch sizes and source lengths than the export example (2 x 4)
    g = torch.Generator().manual_seed(0)
    src = torch.randint(3, 9, (7, 9), generator=g)
    for i, n in enumerate([9, 1, 4, 6, 2, 9, 3]):
        src[i, n:] = PAD
    expected = [h.tokens for h in greedy_decode(model, src, max_len=11)]
    assert ort.decode(src, max_len=11) == expected
    assert len({len(t) for t in expected}) > 1  # outputs of several lengths were compared
    assert ort.decode(src[:1, :5], max_len=2) == [h.tokens for h in greedy_decode(model, src[:1, :5], max_len=2)]
