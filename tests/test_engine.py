"""``engine = "ray"`` on a local Ray (``ray.init(num_cpus=2)``), with the real models: the same embeddings and
student probabilities as in this process (to 1e-5), and a whole run — its LLM labels scored by SmolLM2 on Ray
actors — with the same selections, labels and confidences as the in-process run."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from conftest import read_jsonl, small_config
from imfl.config import RayConfig
from imfl.embeddings import Embedder
from imfl.engine import RayEngine
from imfl.loop import Run
from imfl.student import Student

pytestmark = pytest.mark.slow

LABELS = ["neutral", "positive", "negative"]


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_embeddings_and_student_probabilities_match(local_ray, small_fpb, tmp_path):
    rows = read_jsonl(small_fpb["pool"])
    texts = [r["text"] for r in rows]
    engine = RayEngine(RayConfig(batch_size=16))
    here = Embedder(cache=tmp_path / "here").encode(texts)
    there = engine.embed(Embedder(cache=tmp_path / "there"), texts)
    assert engine.remote["embed"] == len(texts) == 60 and engine.actors["embed"] == 2
    assert there.shape == here.shape and np.abs(there - here).max() < 1e-5

    student = Student(epochs=1, min_steps=0, max_length=32, predict_dtype="float32", seed=0)
    student.fit(texts[::2], [LABELS.index(r["label"]) for r in rows[::2]], len(LABELS))
    here = student.predict_proba(texts)
    there = engine.predict(student, texts, None)
    assert engine.remote["predict"] == len(texts)
    assert np.abs(there - here).max() < 1e-5
    assert here.std(axis=0).max() > 1e-3  # not a constant: the comparison means something


def read_json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _store(run_dir, sql):
    with sqlite3.connect(run_dir / "store.sqlite") as c:
        return c.execute(sql).fetchall()


def test_a_run_on_ray_equals_the_run_in_process(local_ray, tmp_path, small_fpb, imfl_cache):
    def config(engine):
        return small_config(
            {
                "name": engine,
                "seed": 0,
                "strategy": "imfl",
                "output_dir": str(tmp_path),
                "cache_dir": str(imfl_cache),
                "engine": engine,
                "data": {"pool": str(small_fpb["pool"]), "test": str(small_fpb["test"])},
                "budget": {"total": 12, "human": 6, "rounds": 2},
                "student": {"epochs": 1, "min_steps": 0, "max_length": 32, "predict_dtype": "float32"},
                "llm": {"k": 2, "max_length": 512, "dtype": "float32", "cache": False},
            },
            ray__batch_size=16,
            ray__llm_batch_size=3,
            compare_human_only=True,
        )

    runs = {}
    for engine in ("local", "ray"):
        runs[engine] = Run(config(engine))
        runs[engine].execute()
    a, b = (r.run_dir for r in runs.values())
    free_after_round_1 = len(np.load(b / "state" / "proba_round1.npz")["ids"])
    # The test set after each round and once more for the human-only student at the end; the free pool once.
    assert runs["ray"].engine.remote["predict"] == 3 * 30 + free_after_round_1 == 3 * 30 + 60 - 6
    assert runs["ray"].engine.remote["llm"] == 6
    # a round whose LLM items fit in one batch (ray.llm_batch_size = 3) starts one copy of the LLM, not ray.llm_actors
    per_round = [n for (n,) in _store(b, "SELECT COUNT(*) FROM annotations WHERE source = 'llm' GROUP BY round")]
    assert sorted(per_round) == [2, 4]
    assert runs["ray"].engine.actors["llm"] == 1 + 2
    assert runs["ray"].engine.actors["predict"] == 4 * 2  # test set three times, the free pool once: 2+ batches each
    assert _store(a, "SELECT round, item_id, target FROM selections ORDER BY round, rank") == _store(
        b, "SELECT round, item_id, target FROM selections ORDER BY round, rank"
    )
    query = "SELECT item_id, source, label, demo_ids, confidence FROM annotations ORDER BY round, source, item_id"
    here, there = _store(a, query), _store(b, query)
    assert [r[:4] for r in here] == [r[:4] for r in there]
    assert np.allclose([r[4] or 0 for r in here], [r[4] or 0 for r in there], atol=1e-5, rtol=0)
    p, q = np.load(a / "state" / "proba_round1.npz"), np.load(b / "state" / "proba_round1.npz")
    assert p["ids"].tolist() == q["ids"].tolist() and np.abs(p["proba"] - q["proba"]).max() < 1e-5
    assert [m["test_accuracy"] for m in read_json(a / "metrics.json")] == [
        m["test_accuracy"] for m in read_json(b / "metrics.json")
    ]
    assert read_json(a / "metrics.json")[-1]["human_only"] == read_json(b / "metrics.json")[-1]["human_only"]
