"""The Embedder batches texts by their token counts: every row is still its own text's embedding, in the order the
texts were given, and the cache gives back what was computed."""

import numpy as np
import pytest

from conftest import read_jsonl
from imfl.embeddings import Embedder

# slow: the real embedder.
pytestmark = pytest.mark.slow


def test_each_row_is_its_texts_embedding(small_fpb, tmp_path):
    texts = [r["text"] for r in read_jsonl(small_fpb["pool"])][:30]
    texts += ["Up.", " ".join(texts[:3])]  # a one-word text and one longer than any other, at the end
    embedder = Embedder(batch_size=8, cache=tmp_path)
    got = embedder.compute(texts)
    st = embedder._load()
    alone = np.stack([st.encode([t], normalize_embeddings=True, convert_to_numpy=True)[0] for t in texts])  # no padding
    assert got.shape == (len(texts), 384) and got.dtype == np.float32
    assert np.abs(got - alone).max() < 1e-5
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cached = embedder.encode(texts)
    assert np.abs(cached - got).max() < 1e-5 and np.array_equal(embedder.encode(texts), cached)
    assert embedder.compute([]).shape == (0, 384)


def test_a_pinned_thread_count_computes_there_and_caches_apart(small_fpb, tmp_path):
    """embeddings.num_threads: the vectors are computed on that many threads (their last bits depend on it, which is
    why the demo pins it to repeat a grid cell), the caller's thread count is restored, and the cache keeps them apart
    from vectors computed at the default count."""
    import torch

    texts = [r["text"] for r in read_jsonl(small_fpb["pool"])][:20]
    seen = []

    class Spy:  # sentence-transformers' model, noting the thread count of every encode call
        def __init__(self, model):
            self.model = model

        def __getattr__(self, name):
            return getattr(self.model, name)

        def encode(self, *args, **kwargs):
            seen.append(torch.get_num_threads())
            return self.model.encode(*args, **kwargs)

    class Watched(Embedder):
        def _load(self):
            return Spy(super()._load())

    before = torch.get_num_threads()
    one = Watched(batch_size=8, cache=tmp_path, num_threads=1).encode(texts)
    assert seen and set(seen) == {1} and torch.get_num_threads() == before
    default = Embedder(batch_size=8, cache=tmp_path).encode(texts)
    assert np.abs(one - default).max() < 1e-5
    assert len(list((tmp_path / "embeddings").glob("*.npy"))) == 2
