"""One IMFL round by hand, with imfl's parts, then the whole loop with `imfl.run`.

    python examples/api_parts.py [DATA_DIR] [N_HUMAN] [N_LLM]

DATA_DIR holds pool.jsonl and test.jsonl (default ../shared/data/fpb). Small defaults keep it to a
couple of minutes on a laptop CPU.
"""

import sys
import tempfile
from pathlib import Path

import numpy as np

from imfl import DataError, Embedder, LLMAnnotator, LocalBackend, OracleAnnotator, Student, eeq, load_dataset
from imfl.annotators import AnnotationContext
from imfl.config import DataConfig, config_from_dict
from imfl.embeddings import embedding_input
from imfl.query import split_by_uncertainty

data = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "../shared/data/fpb")
n_human = int(sys.argv[2]) if len(sys.argv) > 2 else 12
n_llm = int(sys.argv[3]) if len(sys.argv) > 3 else 12

# 1. Data: the pool (its gold labels play the expert) and a held-out test set.
try:
    ds = load_dataset(DataConfig(pool=data / "pool.jsonl", test=data / "test.jsonl"))
except DataError as exc:
    sys.exit(f"error: {exc}")
pool, task = list(ds.pool), ds.task  # ds.pool is a stream over the file; this small pool fits in memory
print(f"{len(pool)} pool items, {len(ds.test)} test items, labels {task.labels}")

# 2. Embeddings of the pool (cached on disk), then the exploration–exploitation query. Round 1 has no
#    student yet, so uncertainty is None and EEQ is k-means diversity alone.
emb = Embedder().encode([embedding_input(e.text, e.text_pair) for e in pool])
picked = eeq(emb, None, n_human + n_llm, seed=0)
to_human, to_llm = split_by_uncertainty(picked, None, n_human)

# 3. Human first: the simulated expert labels its share ...
human = OracleAnnotator().annotate([pool[i] for i in to_human], AnnotationContext(round=1))
# ... then the LLM, with the most similar human-labeled items as demonstrations.
context = AnnotationContext(
    round=1,
    human_labeled=[(pool[i], a.label) for i, a in zip(to_human, human)],
    human_embeddings=emb[to_human],
    item_embeddings=emb[to_llm],
)
llm = LLMAnnotator(LocalBackend(), task, k=4).annotate([pool[i] for i in to_llm], context)
for a in llm[:3]:
    print(f"LLM: {a.item_id} -> {a.label} (p={a.confidence:.2f}, demos {', '.join(a.demo_ids)})")

# 4. The student learns from both. Per-source weights are a knob (the loop's default is 1.0 for both;
#    here an LLM label counts half as much as a human one). Few steps keep the example quick; the
#    defaults (at least 200 optimizer steps) are what the loop uses.
labeled = [(pool[i], a) for i, a in zip(list(to_human) + list(to_llm), human + llm)]
student = Student(epochs=3, min_steps=20, max_length=64).fit(
    [e.text for e, _ in labeled], [task.index(a.label) for _, a in labeled], len(task.labels),
    sample_weight=[1.0 if a.source == "human" else 0.5 for _, a in labeled],
)
proba = student.predict_proba([e.text for e in ds.test])
accuracy = np.mean(proba.argmax(1) == [task.index(e.label) for e in ds.test])
print(f"student after one hand-made round: test accuracy {accuracy:.3f}")

# 5. The same, as a whole run of several rounds, in one call.
from imfl import run  # noqa: E402

with tempfile.TemporaryDirectory() as out:
    cfg = config_from_dict({
        "name": "api-example", "output_dir": out,
        "data": {"pool": str(data / "pool.jsonl"), "test": str(data / "test.jsonl")},
        "budget": {"total": 2 * (n_human + n_llm), "human": n_human, "rounds": 2},
        "student": {"epochs": 3, "min_steps": 20, "max_length": 64},
    })
    result = run(cfg)
    for m in result.metrics:
        print(f"round {m['round']}: +{m['human_labels']} human, +{m['llm_labels']} LLM, test accuracy {m['test_accuracy']:.3f}")
