"""The teacher-logit cache key, against a hash written out by hand, and the cache's
bookkeeping: exact hit/miss counts, memory hits returning the logits, and a cache file
that is not a plain tensor refused rather than unpickled (written to kill the mutants
of scripts/mutation.sh).
"""

import hashlib
import pickle
import struct

import pytest
import torch
from torch import nn

from research.distill import TeacherLogitCache, model_fingerprint


class One(nn.Module):
    """One float32 weight of 2.0 and an empty buffer."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([2.0]))
        self.register_buffer("e", torch.zeros(0))

    def forward(self, x):
        return x * self.w


class Other(One):
    pass


def test_fingerprint_is_the_documented_sha256_prefix():
    h = hashlib.sha256(b"One")
    h.update(b"w|torch.float32|(1,)")
    h.update(struct.pack("<f", 2.0))  # the weight's little-endian bytes
    h.update(b"e|torch.float32|(0,)")
    h.update(b"")  # an empty tensor adds no bytes
    want = h.hexdigest()[:24]
    assert model_fingerprint(One()) == want
    assert len(want) == 24


def test_fingerprint_depends_on_the_class_and_the_exact_bits():
    assert model_fingerprint(Other()) != model_fingerprint(One())  # same tensors, another architecture
    flipped = One()
    with torch.no_grad():
        flipped.w.copy_(torch.tensor([-2.0]))
    assert model_fingerprint(flipped) != model_fingerprint(One())
    assert model_fingerprint(One().double()) != model_fingerprint(One())


def test_key_joins_the_model_and_data_fingerprints():
    assert TeacherLogitCache().key(One(), "data123") == f"{model_fingerprint(One())}-data123"


def test_hits_and_misses_are_counted_one_by_one_and_memory_hits_return_the_logits(tmp_path):
    x = torch.arange(4.0).unsqueeze(1)
    cache = TeacherLogitCache(tmp_path)
    first = cache.logits(One(), x, "d")
    assert (cache.hits, cache.misses) == (0, 1)
    assert first.flatten().tolist() == [0.0, 2.0, 4.0, 6.0]
    for n in (1, 2):
        again = cache.logits(One(), x, "d")
        assert (cache.hits, cache.misses) == (n, 1)
        assert again.flatten().tolist() == [0.0, 2.0, 4.0, 6.0]
    disk = TeacherLogitCache(tmp_path)  # another process: read from the file, then from memory
    for n in (1, 2):
        assert disk.logits(One(), x, "d").flatten().tolist() == [0.0, 2.0, 4.0, 6.0]
        assert (disk.hits, disk.misses) == (n, 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{disk.key(One(), 'd')}.pt"]
    cache.logits(One(), x, "other")  # a second entry on disk
    disk.logits(One(), x, "other")  # a disk hit after two memory hits: counted on top of them
    assert (disk.hits, disk.misses) == (3, 0)


class Payload:
    pass


def test_a_cache_file_holding_arbitrary_objects_is_refused(tmp_path):
    cache = TeacherLogitCache(tmp_path)
    torch.save({"not": Payload()}, tmp_path / f"{cache.key(One(), 'd')}.pt")
    with pytest.raises(pickle.UnpicklingError):
        cache.logits(One(), torch.ones(2, 1), "d")
