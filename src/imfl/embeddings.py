"""Sentence embeddings with a content-hash disk cache: the pool is embedded once per model, ever."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from imfl.errors import ModelError
from imfl.paths import bundled_encoder, cache_dir, local_model_dir
from imfl.precision import torch_threads

# rows (a slice or an index array) and their embeddings
Chunks = Callable[[Sequence[str]], Iterator[tuple[slice | np.ndarray, np.ndarray]]]


def embedding_input(text: str, text_pair: str | None) -> str:
    """What gets embedded for an item: the text, and the second input after it when there is one."""
    return text if text_pair is None else f"{text}\n{text_pair}"


class Embedder:
    """Normalised sentence embeddings (so a dot product is a cosine similarity)."""

    def __init__(
        self, model: str | None = None, batch_size: int = 64, cache: str | Path | None = None, num_threads: int | None = None
    ):
        self.model = model
        self.batch_size = batch_size
        self.cache = cache
        self.num_threads = num_threads
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
        if self.num_threads is not None:  # the last bits depend on the thread count: a pinned count is its own cache
            h.update(f"threads={self.num_threads}".encode())
        for t in texts:
            h.update(hashlib.sha256(t.encode()).digest())
        return h.hexdigest()[:32]

    def compute(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts`` computed now, in memory (no cache), in batches of texts with similar token counts.

        sentence-transformers sorts a call's texts by their length in characters, a rough guide to their length in
        tokens: on FPB a third of the work went into padding. Each batch here is one ``encode`` call on texts sorted
        by token count (BENCHMARKS.md, "Speed")."""
        st = self._load()
        texts = list(texts)
        tokenizer = getattr(st, "tokenizer", None)
        if tokenizer is None or not texts:  # by characters, as sentence-transformers does (the tokenizer refuses [])
            lengths = [len(t) for t in texts]
        else:
            lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=st.max_seq_length)["input_ids"]]
        order = np.argsort([-n for n in lengths], kind="stable")
        out = np.empty((len(texts), self._dimension()), dtype=np.float32)
        with torch_threads(self.num_threads):
            for start in range(0, len(texts), self.batch_size):
                rows = order[start : start + self.batch_size]
                out[rows] = st.encode(
                    [texts[i] for i in rows],
                    batch_size=len(rows),
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
        return out

    def _chunks(self, texts: Sequence[str]) -> Iterator[tuple[slice, np.ndarray]]:
        step = self.batch_size * 16  # large chunks: each is sorted by token count before batching
        for start in range(0, len(texts), step):
            chunk = texts[start : start + step]
            yield slice(start, start + len(chunk)), self.compute(chunk)

    def encode(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None, chunks: Chunks | None = None
    ) -> np.ndarray:
        """Embeddings of ``texts`` as a float32 array (n, d), memory-mapped from the cache file: read when these exact
        texts were embedded by this model before, else written there chunk by chunk first. ``chunks(texts)`` yields
        (rows, embeddings) in any order; by default this process computes them, in order."""
        target = cache_dir(self.cache) / "embeddings" / f"{self._key(texts)}.npy"
        if target.exists():
            if progress:
                progress(len(texts))
            return np.load(target, mmap_mode="r")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{target.stem}.{os.getpid()}.tmp.npy")  # two processes may embed the same texts at once
        # Written chunk by chunk into a memory-mapped .npy file (made when the first chunk tells the width): a pool of
        # millions never sits in memory twice.
        emb, written = None, 0
        try:
            for rows, values in (chunks or self._chunks)(texts):
                if emb is None:
                    emb = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(texts), values.shape[1]))
                emb[rows] = values
                written += len(values)
                if progress:
                    progress(len(values))
            if written != len(texts):
                raise ModelError(f"embedding {len(texts)} texts returned {written} rows; run again")
            if emb is None:
                emb = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(0, self._dimension()))
            emb.flush()
            del emb
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
        return np.load(target, mmap_mode="r")

    def _dimension(self) -> int:
        st = self._load()
        return int((getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension)())  # renamed in 6.x
