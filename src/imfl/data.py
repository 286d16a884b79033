"""Reading examples from JSONL, CSV or Parquet, and checking them before any model is touched.

Every problem is reported as a ``DataError`` naming the file, the line (1-based, as an editor shows
it; for CSV the header is line 1) and the field, so that the user can fix the file. Input files are
only ever read.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from imfl.config import DataConfig, near_duplicates
from imfl.errors import ConfigError, DataError
from imfl.io import read_rows

DEFAULT_INSTRUCTION = "Classify the text into exactly one of these labels: {labels}. Answer with the label only."


@dataclass(frozen=True)
class Example:
    """One item: what the models read (text, optional text_pair), the gold label when known, and
    every other field of the row (e.g. recorded LLM labels) in ``extra``."""

    id: str
    text: str
    text_pair: str | None = None
    label: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    line: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True)
class Annotation:
    """One label with its provenance. ``source`` is the fidelity it counts as (``human`` or ``llm``:
    the budget and the training weights go by it); ``annotator`` names who actually gave it
    (``oracle``, ``recorded:<column>``, ``local:<model>``, a person). ``label`` is None when the
    annotator gave no usable label: such an annotation spends no budget and the item stays in the pool."""

    item_id: str
    round: int
    source: str  # "human" or "llm"
    annotator: str
    label: str | None  # None: the annotator gave no usable label (the item goes back to the pool)
    probs: dict[str, float] | None = None
    confidence: float | None = None
    cost: float = 0.0
    prompt_hash: str | None = None
    demo_ids: tuple[str, ...] = ()
    method: str | None = None  # how the probabilities were obtained (LLM: loglik, logprobs, self-consistency)
    error: str | None = None  # why there is no label (failed call, unparsed answer)
    prompt_tokens: int | None = None  # as the LLM's server reported them (None: not reported)
    completion_tokens: int | None = None

    @property
    def ok(self) -> bool:
        return self.label is not None


@dataclass(frozen=True)
class Task:
    """What is being learned: the label set, in a fixed order (label index = position), the
    instruction given to the LLM annotator, and what some labels mean (``data.label_descriptions``)."""

    labels: tuple[str, ...]
    instruction: str
    has_pair: bool = False
    descriptions: dict[str, str] = field(default_factory=dict, hash=False)  # label -> a sentence or two; may be empty

    def index(self, label: str) -> int:
        return self.labels.index(label)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if text.strip() else None


def iter_examples(
    path: Path, cfg: DataConfig, what: str = "pool", labels: tuple[str, ...] | None = None, require_label: bool = False
) -> Iterator[Example]:
    """Read and check one file row by row. ``labels`` (when given) is the allowed label set; ``require_label``
    makes a missing gold label an error (test files). Only the ids seen so far are kept (to report a repeated one)."""
    path = Path(path)
    pair_field = cfg.text_pair_field
    seen: dict[str, int] = {}
    for lineno, row in read_rows(path, what):
        where = f"{path}:{lineno}"
        if not seen and pair_field is None and "text_pair" in row:
            pair_field = "text_pair"
        raw_id = row.get(cfg.id_field)
        if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
            raise DataError(
                f"{where}: field {cfg.id_field!r} (the id) is missing or empty; give every row a unique id or set data.id_field"
            )
        item_id = str(raw_id)
        if item_id in seen:
            raise DataError(f"{where}: id {item_id!r} already used on line {seen[item_id]}; ids must be unique")
        seen[item_id] = lineno
        text = _text(row.get(cfg.text_field))
        if text is None:
            raise DataError(
                f"{where}: field {cfg.text_field!r} (the text) is missing or empty; "
                "fill it, remove the row, or set data.text_field"
            )
        pair = None
        if pair_field is not None:
            pair = _text(row.get(pair_field))
            if pair is None:
                raise DataError(
                    f"{where}: field {pair_field!r} (the second input) is missing or empty; fill it or remove the row"
                )
        label = _text(row.get(cfg.label_field))
        if label is not None:
            label = label.strip()
            if labels is not None and label not in labels:
                raise DataError(
                    f"{where}: label {label!r} in field {cfg.label_field!r} is not in the label set "
                    f"({', '.join(labels)}); fix the row or add the label to data.labels"
                )
        elif require_label:
            raise DataError(
                f"{where}: field {cfg.label_field!r} (the gold label) is missing; a {what} file needs a label on every row"
            )
        used = {cfg.id_field, cfg.text_field, cfg.label_field, pair_field}
        extra = {k: v for k, v in row.items() if k not in used}
        yield Example(item_id, text, pair, label, extra, lineno)
    if not seen:
        raise DataError(f"{path}: the {what} file has no rows")


def load_examples(
    path: Path, cfg: DataConfig, what: str = "pool", labels: tuple[str, ...] | None = None, require_label: bool = False
) -> list[Example]:
    """``iter_examples`` as a list (for files that fit in memory: test sets, small pools)."""
    return list(iter_examples(path, cfg, what, labels, require_label))


class Pool:
    """The pool file as a stream of checked examples, never held in memory: every iteration reads the file again
    (keeping only the rows of ``pool_sample`` when set). ``len`` and ``has_pair`` come from the first pass
    (``load_dataset``), which checked every row. A run copies the pool into its store once and reads it from there."""

    def __init__(
        self,
        path: Path,
        cfg: DataConfig,
        labels: tuple[str, ...] | None,
        rows: int,
        has_pair: bool,
        keep: np.ndarray | None = None,
    ):
        self.path, self.cfg, self.labels = Path(path), cfg, labels
        self.rows, self.has_pair, self.keep = rows, has_pair, keep  # rows: in the file; keep: the sample's positions
        self.n = rows if keep is None else len(keep)

    def __len__(self) -> int:
        return self.n

    def describe(self) -> str:
        """What the run draws its items from, for messages: a sample's size is not the file's."""
        if self.keep is None:
            return f"{self.n} items in {self.path}"
        return f"{self.n} items: a sample (data.pool_sample) of the {self.rows} rows in {self.path}"

    def __iter__(self) -> Iterator[Example]:
        rows = iter_examples(self.path, self.cfg, "pool", self.labels)
        if self.keep is None:
            yield from rows
            return
        wanted = iter(self.keep.tolist())
        target = next(wanted, None)
        for position, e in enumerate(rows):
            if position == target:
                yield e
                target = next(wanted, None)
                if target is None:
                    return


@dataclass(frozen=True)
class Dataset:
    task: Task
    pool: Pool
    test: list[Example]


def load_dataset(cfg: DataConfig) -> Dataset:
    """Check the pool (one streaming pass) and read the test file, settle the label set, and check that the test set
    is held out."""
    declared = tuple(cfg.labels) or None  # DataConfig checked it: at least two, each once, no two spellings of one
    test = load_examples(cfg.test, cfg, "test", declared, require_label=True) if cfg.test else []
    held_out = _HeldOut(cfg, test)
    n, has_pair = 0, False
    first: dict[str, str] = {}  # label -> file:line where it first appears
    for e in test:
        assert e.label is not None  # read with require_label=True
        first.setdefault(e.label, f"{cfg.test}:{e.line}")
    for e in iter_examples(cfg.pool, cfg, "pool", declared):
        held_out.check(e)
        if e.label is not None:
            first.setdefault(e.label, f"{cfg.pool}:{e.line}")
        has_pair = e.text_pair is not None
        n += 1
    labels = declared or _found_labels(cfg, first)
    keep = _sample(n, cfg.pool_sample, cfg.pool, "pool")
    pool = Pool(cfg.pool, cfg, declared, n, has_pair, keep)
    if cfg.test and (test_keep := _sample(len(test), cfg.test_sample, cfg.test, "test")) is not None:
        test = [test[i] for i in test_keep]
    if test and (test[0].text_pair is not None) != has_pair:
        raise DataError(
            f"{cfg.test}: the pool {'has' if has_pair else 'has no'} second input (text_pair) but the test file "
            f"{'does not' if has_pair else 'does'}; both files must have the same fields"
        )
    if unknown := [label for label in cfg.label_descriptions if label not in labels]:
        files = " and ".join(str(p) for p in (cfg.pool, cfg.test) if p)
        raise ConfigError(
            f"data.label_descriptions describes {unknown[0]!r}, which is not a label in {files} ({', '.join(labels)}): "
            "spell it as in the data, or remove it"
        )
    instruction = cfg.instruction or DEFAULT_INSTRUCTION
    task = Task(
        labels=labels,
        instruction=instruction.replace("{labels}", ", ".join(labels)),
        has_pair=has_pair,
        descriptions={label: cfg.label_descriptions[label] for label in labels if label in cfg.label_descriptions},
    )
    return Dataset(task, pool, test)


def _found_labels(cfg: DataConfig, first: dict[str, str]) -> tuple[str, ...]:
    """The label set taken from the data (data.labels empty), refused when it cannot be the set of a classifier."""
    if len(first) < 2:
        files = " and ".join(str(p) for p in (cfg.pool, cfg.test) if p)
        what = f"only one label ({next(iter(first))!r})" if first else "no label"
        raise DataError(
            f"{files}: {what} in field {cfg.label_field!r}; a classifier needs at least two: check "
            "data.label_field, or list the label set in data.labels"
        )
    if variants := near_duplicates(sorted(first)):
        spelled = "; ".join(" and ".join(f"{label!r} ({first[label]})" for label in g) for g in variants)
        raise DataError(
            f"labels that differ only in case or spaces in field {cfg.label_field!r}: {spelled}; "
            "spell each label one way in the files"
        )
    return tuple(sorted(first))


def _sample(n: int, size: int, path: Path, what: str) -> np.ndarray | None:
    """The positions of a fixed random subset of ``size`` of the ``n`` rows of the ``what`` file, in file order (None:
    all rows, when size is 0 or n). A size above n is a mistake: the run would be bigger than the setting says."""
    if size > n:
        raise DataError(
            f"{path}: data.{what}_sample is {size} but the {what} file has only {n} rows; lower "
            f"data.{what}_sample, or set it to 0 to use every row"
        )
    if size in (0, n):
        return None
    return np.sort(np.random.default_rng(0).choice(n, size, replace=False))


class _HeldOut:
    """Checks pool rows, one at a time, against the test set: no shared id, no shared text."""

    def __init__(self, cfg: DataConfig, test: list[Example]):
        self.cfg = cfg
        self.by_id = {e.id: e for e in test}
        self.by_text = {(e.text, e.text_pair): e for e in test}

    def check(self, e: Example) -> None:
        other, reason = self.by_id.get(e.id), f"id {e.id!r}"
        if other is None:
            other, reason = self.by_text.get((e.text, e.text_pair)), "the same text"
        if other is not None:
            raise DataError(
                f"{self.cfg.test}:{other.line}: {reason} is also in the pool ({self.cfg.pool}:{e.line}); "
                "the test set must be held out: remove the overlap from one of the files"
            )
