"""imfl: Interactive Multi-Fidelity Learning.

A fixed annotation budget is split between a few high-fidelity human labels and many low-fidelity
LLM labels, round after round; a small student model is fine-tuned on all of them.

    from imfl import load_config, run
    result = run(load_config("configs/fpb.toml"))

Heavy parts (models) are imported lazily, so ``import imfl`` is quick and touches no network. Importing or
using imfl changes nothing in ``os.environ``: models are loaded from local paths with ``local_files_only=True``,
so no model hub is contacted whatever the Hugging Face settings of the process (only the ``imfl`` command sets
environment variables, for its own process: see ``imfl.cli``).
"""

from imfl.config import RunConfig, config_from_dict, load_config
from imfl.data import Annotation, Dataset, Example, Task, load_dataset
from imfl.errors import AnnotatorError, BudgetError, ConfigError, DataError, ImflError, ModelError

__version__ = "0.1.0"

_LAZY = {
    "run": "imfl.loop",
    "Run": "imfl.loop",
    "RunResult": "imfl.loop",
    "Student": "imfl.student",
    "Embedder": "imfl.embeddings",
    "AnnotationContext": "imfl.annotators",
    "LLMAnnotator": "imfl.annotators",
    "OracleAnnotator": "imfl.annotators",
    "RecordedAnnotator": "imfl.annotators",
    "PeopleAnnotator": "imfl.annotators",
    "Labeling": "imfl.people",
    "LocalBackend": "imfl.llm.local",
    "eeq": "imfl.query",
    "least_confidence": "imfl.query",
    "round_plan": "imfl.query",
    "split_by_uncertainty": "imfl.query",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'imfl' has no attribute {name!r}")


__all__ = [
    "Annotation",
    "AnnotatorError",
    "BudgetError",
    "ConfigError",
    "DataError",
    "Dataset",
    "Example",
    "ImflError",
    "ModelError",
    "RunConfig",
    "Task",
    "config_from_dict",
    "load_config",
    "load_dataset",
    *_LAZY,
]
