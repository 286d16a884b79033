"""imfl: Interactive Multi-Fidelity Learning.

A fixed annotation budget is split between a few high-fidelity human labels and many low-fidelity
LLM labels, round after round; a small student model is fine-tuned on all of them.

    from imfl import load_config, run
    result = run(load_config("configs/fpb.toml"))

Heavy parts (models) are imported lazily, so ``import imfl`` is quick and touches no network.
"""

import os

# imfl only ever loads models from local paths; never let a library reach for a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# oneDNN keeps a compiled kernel for every input shape it meets (1,024 by default); prompts and batches come in many
# lengths, so that cache grew the process by ~0.25 GiB per 500 LLM prompts. 16 halved the growth at the same speed.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")

from imfl.config import RunConfig  # noqa: E402, config_from_dict, load_config
from imfl.data import Annotation, Dataset, Example, Task, load_dataset  # noqa: E402
from imfl.errors import AnnotatorError, BudgetError, ConfigError, DataError, ImflError, ModelError  # noqa: E402

__version__ = "0.1.0"

_LAZY = {
    "run": "imfl.loop", "Run": "imfl.loop", "RunResult": "imfl.loop",
    "Student": "imfl.student", "Embedder": "imfl.embeddings",
    "LLMAnnotator": "imfl.annotators", "OracleAnnotator": "imfl.annotators", "RecordedAnnotator": "imfl.annotators",
    "PeopleAnnotator": "imfl.annotators", "Labeling": "imfl.people",
    "LocalBackend": "imfl.llm.local",
    "eeq": "imfl.query", "least_confidence": "imfl.query", "round_plan": "imfl.query", "split_by_uncertainty": "imfl.query",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'imfl' has no attribute {name!r}")


__all__ = [
    "Annotation", "AnnotatorError", "BudgetError", "ConfigError", "DataError", "Dataset", "Example", "ImflError",
    "ModelError", "RunConfig", "Task", "config_from_dict", "load_config", "load_dataset", *_LAZY,
]
