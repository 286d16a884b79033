"""Where pool-sized work runs: embedding the pool, the student's predictions over the pool and the test set, and
LLM scoring. ``engine = "local"`` (the default) does it in this process; ``engine = "ray"`` sends it through Ray
Data (``map_batches`` over fixed pools of actors) on a local Ray or the cluster ``ray.address`` / ``$RAY_ADDRESS``
names. Everything else — the store, the query, training, prompts, the answer cache, provenance — stays in the
driver, so both engines give the same run: same embeddings and probabilities up to float rounding (padding
differs between batches), the same selections and labels.

What travels to the actors is self-contained, so workers need imfl installed but no shared disk: the texts, the
trained student as the bytes of its saved adapter, and the LLM backend's settings (a local model is loaded on
each actor; an HTTP backend's API key travels in memory, never to disk by imfl). Recorded and simulated LLMs are
table lookups and stay in the driver.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from imfl.config import RayConfig, RunConfig
from imfl.errors import ConfigError, ImflError

Progress = Callable[[int], None] | None
EMBED_WINDOW = 100_000  # texts sent to Ray at once


class LocalEngine:
    """Pool-sized work in this process (the default)."""

    name = "local"

    def embed(self, embedder, texts: Sequence[str], progress: Progress = None) -> np.ndarray:
        return embedder.encode(texts, progress)

    def predict(self, student, texts: Sequence[str], pairs: Sequence[str] | None, progress: Progress = None) -> np.ndarray:
        return student.predict_proba(texts, text_pairs=pairs, progress=progress)

    def wrap_llm(self, annotator):
        return annotator


class RayEngine:
    """Pool-sized work on Ray Data actor pools. ``remote`` counts the items each kind of work sent to Ray, ``actors``
    the actors it started for them."""

    name = "ray"

    def __init__(self, settings: RayConfig):
        self.settings = settings
        self.remote: Counter[str] = Counter()
        self.actors: Counter[str] = Counter()

    def _data(self):
        """Ray Data, connected on first use (to ``settings.address``, else $RAY_ADDRESS, else a new local Ray)."""
        try:
            import ray
            import ray.data
        except ImportError:
            raise ConfigError(
                "engine = 'ray' needs Ray: install it with `pip install 'imfl[ray]'`, or set engine = 'local'"
            ) from None
        if not ray.is_initialized():
            try:
                ray.init(
                    address=self.settings.address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
                )
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.settings.address or "$RAY_ADDRESS or a new local Ray"
                raise ConfigError(
                    f"ray.address: cannot start or join Ray at {where} ({str(exc).splitlines()[0]}); "
                    "check the address and that the cluster is up"
                ) from None
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # progress is ours: the driver counts the rows coming back
        ctx.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        return ray.data

    def _map(
        self,
        rows: dict[str, list | np.ndarray],
        actor: type,
        args: tuple,
        *,
        actors: int,
        cpus: float,
        batch_size: int,
        kind: str,
        progress: Progress,
    ) -> Iterator[dict[str, np.ndarray]]:
        """``rows`` (columns; ``row`` numbers them) through a pool of ``actors`` copies of ``actor(*args)`` (fewer
        when there are fewer batches: each copy loads a model); yields the result batches as they come back, in any
        order, and counts them."""
        data = self._data()
        import pyarrow as pa
        import ray

        table = pa.table(rows)
        blocks = [table.slice(start, batch_size) for start in range(0, table.num_rows, batch_size)]  # one batch per block
        size = min(actors, len(blocks))
        self.actors[kind] += size
        dataset = data.from_arrow(blocks).map_batches(
            actor,
            fn_constructor_args=args,
            batch_size=batch_size,
            compute=data.ActorPoolStrategy(size=size),
            num_cpus=cpus,
            batch_format="numpy",
        )
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                n = len(batch["row"])
                self.remote[kind] += n
                if progress:
                    progress(n)
                yield batch
        except ray.exceptions.RayError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, ImflError):
                raise cause from None
            raise ImflError(f"{kind} on Ray failed: {str(exc).strip().splitlines()[-1]}") from None

    # -- the three kinds of pool-sized work -------------------------------------------------------
    def embed(self, embedder, texts: Sequence[str], progress: Progress = None) -> np.ndarray:
        s = self.settings

        def chunks(todo: Sequence[str]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for start in range(0, len(todo), EMBED_WINDOW):  # a pool larger than memory goes in windows
                window = todo[start : start + EMBED_WINDOW]
                rows: dict[str, list | np.ndarray] = {"row": np.arange(start, start + len(window)), "text": list(window)}
                for batch in self._map(
                    rows,
                    _Embed,
                    (embedder.model, embedder.batch_size),
                    actors=s.actors,
                    cpus=s.cpus_per_actor,
                    batch_size=s.batch_size,
                    kind="embed",
                    progress=None,
                ):
                    yield batch["row"], batch["embedding"]

        return embedder.encode(texts, progress, chunks=chunks)

    def predict(self, student, texts: Sequence[str], pairs: Sequence[str] | None, progress: Progress = None) -> np.ndarray:
        s = self.settings
        out = np.empty((len(texts), student.n_labels_), dtype=np.float64)
        if not len(texts):
            return out
        rows: dict[str, list | np.ndarray] = {"row": np.arange(len(texts)), "text": list(texts)}
        if pairs is not None:
            rows["pair"] = list(pairs)
        for batch in self._map(
            rows,
            _Predict,
            (_saved(student),),
            actors=s.actors,
            cpus=s.cpus_per_actor,
            batch_size=s.batch_size,
            kind="predict",
            progress=progress,
        ):
            out[batch["row"]] = batch["proba"]
        return out

    def wrap_llm(self, annotator):
        """An LLM annotator whose backend scores its prompts on Ray actors; other annotators as they are."""
        backend = getattr(annotator, "backend", None)
        if backend is not None and not isinstance(backend, RayBackend):
            annotator.backend = RayBackend(backend, self)
        return annotator


class RayBackend:
    """An LLM backend that scores prompts on ``llm_actors`` Ray actors, each holding a copy of ``inner``. Same
    contract, name and cache key as ``inner``: the driver's answer cache and provenance do not see a difference."""

    def __init__(self, inner, engine: RayEngine):
        self.inner = inner
        self.engine = engine

    @property
    def name(self) -> str:
        return self.inner.name

    def cache_key(self) -> dict:
        return self.inner.cache_key()

    def score_items(self, prompts, labels, progress=None, on_result=None):
        from imfl.llm.base import Scored

        s = self.engine.settings
        out: list = [None] * len(prompts)
        if not len(prompts):
            return out
        rows = {"row": np.arange(len(prompts)), "prompt": [json.dumps(p, ensure_ascii=False) for p in prompts]}
        for batch in self.engine._map(
            rows,
            _Score,
            (self.inner, list(labels)),
            actors=s.llm_actors,
            cpus=s.llm_cpus_per_actor,
            batch_size=s.llm_batch_size,
            kind="llm",
            progress=progress,
        ):
            for i, scored in zip(batch["row"], batch["scored"]):
                out[int(i)] = Scored(**json.loads(scored))
                if on_result:
                    on_result(int(i), out[int(i)])
        return out


# -- the actors (built once per pass on a Ray worker) -----------------------------------------------------


class _Embed:
    def __init__(self, model: str | None, batch_size: int):
        from imfl.embeddings import Embedder

        self.embedder = Embedder(model, batch_size)

    def __call__(self, batch: dict) -> dict:
        emb = self.embedder.compute(list(batch["text"]))
        return {"row": batch["row"], "embedding": emb}


class _Predict:
    def __init__(self, saved: dict[str, bytes]):
        from imfl.student import Student

        self.folder = tempfile.TemporaryDirectory(prefix="imfl-student-")
        for name, data in saved.items():
            path = Path(self.folder.name) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        self.student = Student.load(self.folder.name)

    def __call__(self, batch: dict) -> dict:
        pairs = list(batch["pair"]) if "pair" in batch else None
        proba = self.student.predict_proba(list(batch["text"]), text_pairs=pairs)
        return {"row": batch["row"], "proba": proba}


class _Score:
    def __init__(self, backend, labels: list[str]):
        self.backend, self.labels = backend, labels

    def __call__(self, batch: dict) -> dict:
        prompts = [json.loads(p) for p in batch["prompt"]]
        scored = self.backend.score_items(prompts, self.labels)
        return {"row": batch["row"], "scored": np.array([json.dumps(s.to_json()) for s in scored], dtype=object)}


def _saved(student) -> dict[str, bytes]:
    """A trained student as the files ``Student.save`` writes (a few MB: the LoRA adapter and the head)."""
    with tempfile.TemporaryDirectory(prefix="imfl-student-") as folder:
        student.save(folder)
        return {str(p.relative_to(folder)): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}


ENGINES: dict[str, Callable[[RunConfig], LocalEngine | RayEngine]] = {
    "local": lambda cfg: LocalEngine(),
    "ray": lambda cfg: RayEngine(cfg.ray),
}


def make_engine(cfg: RunConfig) -> LocalEngine | RayEngine:
    return ENGINES[cfg.engine](cfg)
