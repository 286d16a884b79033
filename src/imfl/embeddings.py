"""Sentence embeddings with a content-hash disk cache: the pool is embedded once per model, ever."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from imfl.paths import bundled_encoder, cache_dir, local_model_dir


def embedding_input(text: str, text_pair: str | None) -> str:
    """What gets embedded for an item: the text, and the second input after it when there is one."""
    return text if text_pair is None else f"{text}\n{text_pair}"


class Embedder:
    """Normalised sentence embeddings (so a dot product is a cosine similarity)."""

    def __init__(self, model: str | None = None, batch_size: int = 64, cache: str | Path | None = None):
        self.model = model
        self.batch_size = batch_size
        self.cache = cache
        self._st = None

    def _path(self) -> Path:
        return local_model_dir(self.model, "embeddings.model") if self.model else bundled_encoder()

    def _load(self):
        if self._st is None:
            from sentence_transformers import SentenceTransformer

            self._st = SentenceTransformer(str(self._path()), device="cpu", local_files_only=True)
        return self._st

    def _key(self, texts: Sequence[str]) -> str:
        h = hashlib.sha256(str(self._path().resolve()).encode())
        for t in texts:
            h.update(hashlib.sha256(t.encode()).digest())
        return h.hexdigest()[:32]

    def encode(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embeddings of ``texts`` as a float32 array (n, d), memory-mapped from the cache file: read when these exact
        texts were embedded by this model before, else written there chunk by chunk first."""
        target = cache_dir(self.cache) / "embeddings" / f"{self._key(texts)}.npy"
        if target.exists():
            if progress:
                progress(len(texts))
            return np.load(target, mmap_mode="r")
        st = self._load()
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.stem}.{os.getpid()}.tmp.npy")  # two processes may embed the same texts at once
        dim = (getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension)()  # renamed in 6.x
        # Written chunk by chunk into a memory-mapped .npy file: a pool of millions never sits in memory twice.
        emb = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(texts), dim))
        step = self.batch_size * 16  # large chunks: sentence-transformers sorts each by length
        try:
            for start in range(0, len(texts), step):
                chunk = list(texts[start : start + step])
                emb[start : start + len(chunk)] = st.encode(chunk, batch_size=self.batch_size, normalize_embeddings=True,
                                                            convert_to_numpy=True)
                if progress:
                    progress(len(chunk))
            emb.flush()
            del emb
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
        return np.load(target, mmap_mode="r")
