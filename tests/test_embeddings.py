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
