"""Predicting labels for a file of texts with a trained model, as a stream: `imfl predict MODEL INPUT`.

MODEL is any of three kinds of directory, told apart by the files in it:

- a run folder written by ``imfl run`` (``config.toml`` and ``adapter/student.json``): the student of its last
  round, with the run's field settings (``data.id_field``, ``data.text_field``, ``data.text_pair_field``);
- a directory written by ``Student.save`` (``student.json``);
- a Hugging Face text classifier, e.g. one written by ``imfl export --format hf`` (``config.json`` with
  ``id2label`` and ``model.safetensors``), loaded with transformers' Auto classes from the directory only; the
  ``imfl`` entry of its config, when there, gives ``uses_text_pairs``, ``max_length`` and the field settings.

INPUT (JSONL, CSV or Parquet, by its suffix) is read a chunk of rows at a time; each chunk is predicted and
written before the next is read, so memory does not grow with the file. Rows that cannot be predicted (no id,
no text, no second input for a model trained with one, a line that is not a JSON object) are reported with
their file and line and skipped; the others are predicted.

Output, one record per predicted row in input order: JSON lines ``{"id": ..., "label": ..., "probs": {label: p}}``,
or CSV with the columns ``id``, ``label`` and ``p_<label>`` per label. Ids are written as strings, as imfl reads them.

From Python::

    from imfl.predict import load_predictor, predict_file
    model = load_predictor("runs/fpb")             # .labels, .predict_proba(texts, text_pairs)
    summary = predict_file(model, "new.jsonl", "predictions.csv")
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from imfl.errors import ConfigError, DataError, ModelError
from imfl.io import jsonl_objects, not_utf8, read_rows

__all__ = ["Fields", "ModelInfo", "Predictor", "PredictSummary", "inspect_model", "load_predictor", "predict_file"]

INPUT_SUFFIXES = (".jsonl", ".ndjson", ".json", ".csv", ".parquet")
_JSON_SUFFIXES = (".jsonl", ".ndjson", ".json")
DTYPES = ("float32", "bfloat16", "auto")
MODEL_KINDS = (
    "a run folder (config.toml and adapter/student.json), a Student.save directory (student.json) or a "
    "Hugging Face classifier (config.json with id2label, and model.safetensors)"
)
_PEEK_ROWS = 100  # JSONL rows looked at, before the model is loaded, for the fields the model needs


@dataclass(frozen=True)
class Fields:
    """Which input field holds what. ``text_pair`` is None for a model trained on single texts."""

    id: str = "id"
    text: str = "text"
    text_pair: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    """What a model directory holds, read from its small settings files only (no weights are loaded)."""

    path: Path
    kind: str  # "run", "student" or "hf"
    weights: Path  # the directory the weights are loaded from (a run folder's adapter/)
    labels: tuple[str, ...]
    uses_text_pairs: bool
    fields: Fields  # the field settings the model was trained with (defaults when it does not say)


@dataclass
class PredictSummary:
    """How a file went: rows predicted and skipped (with the first ``problems``), time taken, where the output went."""

    @property
    def rows_per_second(self) -> float:
        """Rows predicted per second once the model was loaded."""
        return self.predicted / max(self.seconds - self.load_seconds, 1e-9)

    predicted: int = 0
    skipped: int = 0
    seconds: float = 0.0  # in all, loading the model included
    load_seconds: float = 0.0  # loading the model
    out: Path | None = None
    problems: list[str] = field(default_factory=list)  # "FILE:LINE: what is wrong", the first 20


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable ({exc}); the model directory is damaged, write it again") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: expected a JSON object; the model directory is damaged, write it again")
    return data


def _student_info(path: Path, kind: str, weights: Path, fields: Fields) -> ModelInfo:
    info = _read_json(weights / "student.json")
    try:
        n = int(info["n_labels"])
        pairs = bool(info["uses_text_pairs"])
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{weights / 'student.json'}: n_labels or uses_text_pairs missing; save the student again") from None
    names = info.get("labels")
    labels = tuple(str(x) for x in names) if isinstance(names, list) and len(names) == n else tuple(str(i) for i in range(n))
    if pairs and fields.text_pair is None:
        fields = Fields(fields.id, fields.text, "text_pair")  # what a run finds by itself in a pool
    return ModelInfo(path, kind, weights, labels, pairs, fields if pairs else Fields(fields.id, fields.text, None))


def _run_fields(run_dir: Path) -> Fields:
    from imfl.config import read_toml

    data = read_toml(run_dir / "config.toml", "run configuration", "pass a run folder written by imfl run").get("data", {})
    get = lambda key, default: data.get(key) if isinstance(data.get(key), str) and data.get(key) else default  # noqa: E731
    return Fields(get("id_field", "id"), get("text_field", "text"), get("text_pair_field", None))


def _hf_info(path: Path) -> ModelInfo:
    config = _read_json(path / "config.json")
    id2label = config.get("id2label")
    if not isinstance(id2label, dict) or not id2label:
        raise ModelError(
            f"{path}: config.json has no id2label, so this is not a text classifier; pass a run folder, a "
            "Student.save directory or an exported classifier (imfl export --format hf)"
        )
    try:
        labels = tuple(str(id2label[k]) for k in sorted(id2label, key=int))
    except ValueError:
        raise ModelError(f"{path / 'config.json'}: id2label keys must be class numbers; write the model again") from None
    extra = config.get("imfl")
    if not isinstance(extra, dict):
        extra = {}

    def get(key: str, default: str) -> str:
        value = extra.get(key)
        return value if isinstance(value, str) and value else default

    pairs = bool(extra.get("uses_text_pairs", False))
    pair_field = get("text_pair_field", "text_pair") if pairs else None
    return ModelInfo(path, "hf", path, labels, pairs, Fields(get("id_field", "id"), get("text_field", "text"), pair_field))


def inspect_model(path: str | os.PathLike) -> ModelInfo:
    """Tell which kind of model directory ``path`` is and read its labels, pair use and field settings,
    or raise ModelError naming the path and what a model directory must hold."""
    path = Path(path)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is a file, not a directory"
        raise ModelError(f"{path}: {what}; MODEL must be {MODEL_KINDS}")
    if (path / "config.toml").is_file():
        if not (path / "adapter" / "student.json").is_file():
            raise ModelError(
                f"{path}: a run folder without a trained student (adapter/student.json missing); run it "
                f"until a round finishes (imfl run {path})"
            )
        return _student_info(path, "run", path / "adapter", _run_fields(path))
    if (path / "student.json").is_file():
        return _student_info(path, "student", path, Fields())
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return _hf_info(path)
    raise ModelError(f"{path}: not a model directory; MODEL must be {MODEL_KINDS}")


class Predictor:
    """A loaded model: ``labels`` (class names, in probability-column order), ``uses_text_pairs``, ``fields`` (its
    field settings) and ``predict_proba(texts, text_pairs)`` (rows sum to 1). Build it with :func:`load_predictor`."""

    def __init__(self, info: ModelInfo, model: Any, tokenizer: Any = None, max_length: int | None = None, bf16: bool = False):
        self.info = info
        self.labels = list(info.labels)
        self.uses_text_pairs = info.uses_text_pairs
        self.fields = info.fields
        self._model, self._tokenizer, self._max_length, self._bf16 = model, tokenizer, max_length, bf16

    @property
    def kind(self) -> str:
        return self.info.kind

    def predict_proba(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None, batch_size: int = 64) -> np.ndarray:
        """Probabilities, shape (len(texts), len(labels)), in the order of ``texts``."""
        if (text_pairs is not None) != self.uses_text_pairs:
            need = (
                "needs text_pairs (it was trained with a second input)"
                if self.uses_text_pairs
                else "was trained on single texts: pass no text_pairs"
            )
            raise ModelError(f"{self.info.path}: this model {need}")
        if self.info.kind != "hf":
            return self._model.predict_proba(
                list(texts), text_pairs=None if text_pairs is None else list(text_pairs), batch_size=batch_size
            )
        return self._hf_proba(list(texts), None if text_pairs is None else list(text_pairs), batch_size)

    def _hf_proba(self, texts: list[str], pairs: list[str] | None, batch_size: int) -> np.ndarray:
        import torch

        out = np.empty((len(texts), len(self.labels)), dtype=np.float64)
        if not texts:
            return out
        enc = self._tokenizer(
            texts, pairs, truncation="longest_first" if pairs is not None else True, max_length=self._max_length, padding=False
        )
        order = np.argsort([-len(ids) for ids in enc["input_ids"]], kind="stable")  # less padding per batch
        keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
        device = next(self._model.parameters()).device
        autocast = torch.autocast(device.type, dtype=torch.bfloat16) if self._bf16 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                batch = self._tokenizer.pad({k: [enc[k][i] for i in idx] for k in keys}, return_tensors="pt")
                logits = self._model(**{k: v.to(device) for k, v in batch.items()}).logits
                probs = torch.softmax(logits.float(), dim=-1).cpu().numpy().astype(np.float64)
                out[idx] = probs / probs.sum(axis=1, keepdims=True)
        return out


def load_predictor(model: str | os.PathLike | ModelInfo, dtype: str = "float32", device: str | None = None) -> Predictor:
    """Load the model of a run folder, a Student.save directory or a Hugging Face classifier directory.

    ``dtype``: ``float32`` (default: an item's probabilities do not depend on the rows it is batched with),
    ``bfloat16`` (faster where the CPU has bfloat16 instructions; probabilities move by up to a few hundredths) or
    ``auto`` (bfloat16 where native, else float32)."""
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is unknown; use {', '.join(DTYPES)}")
    info = model if isinstance(model, ModelInfo) else inspect_model(model)
    if info.kind != "hf":
        from imfl.student import Student

        student = Student.load(info.weights, device=device)
        student.predict_dtype = dtype
        return Predictor(info, student)
    return _load_hf(info, dtype, device)


def _load_hf(info: ModelInfo, dtype: str, device: str | None) -> Predictor:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from imfl.precision import resolve_dtype

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(info.weights), local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(str(info.weights), local_files_only=True, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - any load failure becomes one clear message
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelError(
            f"{info.path}: cannot load this classifier ({type(exc).__name__}: {first}); it needs config.json, "
            "model.safetensors and the tokenizer files"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if int(model.config.num_labels) != len(info.labels):
        raise ModelError(
            f"{info.path}: config.json names {len(info.labels)} labels but the model has {model.config.num_labels} outputs"
        )
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(torch_device).eval()
    extra = getattr(model.config, "imfl", None)
    limit = extra.get("max_length") if isinstance(extra, dict) else None
    if not isinstance(limit, int) or limit < 1:
        limit = tokenizer.model_max_length
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if isinstance(max_pos, int) and max_pos > 0:
        limit = min(limit, max_pos)
    bf16 = resolve_dtype(dtype, torch_device.type) == "bfloat16"
    return Predictor(info, model, tokenizer, int(limit), bf16)


# -- input ------------------------------------------------------------------------------------------------


def _rows(path: Path) -> Iterator[tuple[int, dict | str]]:
    """The input's rows with their line numbers (CSV: the header is line 1; Parquet: row numbers)."""
    if path.suffix.lower() in _JSON_SUFFIXES:
        try:
            yield from jsonl_objects(path)
        except UnicodeDecodeError:
            raise DataError(not_utf8(path)) from None
        return
    yield from read_rows(path, "input")


def _columns(path: Path) -> set[str] | None:
    """The input's field names, read without reading the whole file (JSONL: the fields of its first rows);
    None when they cannot be told this way."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(encoding="utf-8-sig", newline="") as fh:
                header = next(csv.reader(fh), None)
            if header is None:
                raise DataError(f"{path}: the input file is empty; give it a header line and rows")
            return set(header)
        if suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise DataError(f"{path}: reading Parquet needs pyarrow; install it with `pip install pyarrow`") from None
            try:
                return set(pq.ParquetFile(path).schema_arrow.names)
            except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
                raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
        names: set[str] = set()
        seen = 0
        with path.open(encoding="utf-8-sig") as fh:
            for line in fh:
                if not line.strip():
                    continue
                seen += 1
                with contextlib.suppress(json.JSONDecodeError):
                    row = json.loads(line)
                    if isinstance(row, dict):
                        names.update(row)
                if seen >= _PEEK_ROWS:
                    break
        if not seen:
            raise DataError(f"{path}: the input file has no rows; give it one JSON object per line")
        return names or None
    except UnicodeDecodeError:
        raise DataError(not_utf8(path)) from None


def check_input(path: Path, fields: Fields) -> None:
    """Fail early (before any model is loaded) when the input is missing, of an unknown type, or lacks a field
    the model needs."""
    if not path.is_file():
        raise DataError(f"{path}: input file not found; check the path")
    if path.suffix.lower() not in INPUT_SUFFIXES:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; use .jsonl, .csv or .parquet")
    columns = _columns(path)
    if columns is None:
        return
    wanted = [(fields.id, "--id-field", "the id"), (fields.text, "--text-field", "the text")]
    if fields.text_pair is not None:
        wanted.append((fields.text_pair, "--text-pair-field", "the second input: this model was trained with text pairs"))
    for name, option, what in wanted:
        if name not in columns:
            shown = ", ".join(sorted(columns)[:12]) + (", ..." if len(columns) > 12 else "")
            raise DataError(f"{path}: no field {name!r} ({what}); the file has {shown}; name the right one with {option}")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text if text.strip() else None


def _checked(path: Path, fields: Fields) -> Iterator[tuple[str, str, str | None] | tuple[None, str, None]]:
    """(id, text, pair) per usable row, or (None, "FILE:LINE: problem", None) per unusable one."""
    for lineno, row in _rows(path):
        where = f"{path}:{lineno}"
        if isinstance(row, str):
            yield None, f"{where}: {row}", None
            continue
        raw_id = row.get(fields.id)
        if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
            yield None, f"{where}: field {fields.id!r} (the id) is missing or empty", None
            continue
        text = _text(row.get(fields.text))
        if text is None:
            yield None, f"{where}: field {fields.text!r} (the text) is missing or empty", None
            continue
        pair = None
        if fields.text_pair is not None:
            pair = _text(row.get(fields.text_pair))
            if pair is None:
                yield None, f"{where}: field {fields.text_pair!r} (the second input) is missing or empty", None
                continue
        yield str(raw_id), text, pair


# -- output -----------------------------------------------------------------------------------------------


def _output_format(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in _JSON_SUFFIXES:
        return "jsonl"
    raise ConfigError(f"--out {out}: unknown output type {out.suffix!r}; end it in .jsonl or .csv")


def check_output(out: Path, input_path: Path) -> str:
    """The output format for ``out`` ("jsonl" or "csv"), or an error when ``out`` is the input or cannot be written."""
    fmt = _output_format(out)
    same = out.resolve() == input_path.resolve()
    if not same and out.exists():
        with contextlib.suppress(OSError):
            same = os.path.samefile(out, input_path)
    if same:
        raise ConfigError(f"--out {out} is the input file; write the predictions to another file")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file name ending in .jsonl or .csv")
    if not out.parent.is_dir():
        raise ConfigError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    return fmt


class _Writer:
    """Writes prediction records as JSON lines or CSV (header first) to a text stream."""

    def __init__(self, fh: IO[str], fmt: str, labels: list[str]):
        self.fh, self.fmt, self.labels = fh, fmt, labels
        if fmt == "csv":
            self.csv = csv.writer(fh, lineterminator="\n")
            self.csv.writerow(["id", "label", *(f"p_{label}" for label in labels)])

    def write(self, ids: list[str], probs: np.ndarray) -> None:
        best = probs.argmax(axis=1)
        if self.fmt == "csv":
            self.csv.writerows([i, self.labels[b], *map(float, p)] for i, b, p in zip(ids, best, probs))
            return
        self.fh.writelines(
            json.dumps({"id": i, "label": self.labels[b], "probs": dict(zip(self.labels, map(float, p)))}, ensure_ascii=False)
            + "\n"
            for i, b, p in zip(ids, best, probs)
        )


def _file_mode(path: Path) -> int:
    """The permissions ``path`` has, or those a newly created file gets (0666 less the umask)."""
    with contextlib.suppress(OSError):
        return path.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def _target(out: Path | IO[str] | None) -> Iterator[IO[str]]:
    """The stream to write to: stdout, a given stream, or a temporary file next to ``out`` that replaces ``out``
    only when everything went well (removed otherwise)."""
    if out is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    if not isinstance(out, Path):
        yield out
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            yield fh
        os.chmod(tmp, _file_mode(out))  # mkstemp makes the file private (0600); give it what a new file gets
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# -- the whole file -----------------------------------------------------------------------------------------


def resolve_fields(
    info: ModelInfo, id_field: str | None = None, text_field: str | None = None, text_pair_field: str | None = None
) -> Fields:
    """The model's field settings with the given ones instead, where given."""
    if text_pair_field and not info.uses_text_pairs:
        raise ConfigError(
            f"--text-pair-field {text_pair_field!r}: the model in {info.path} was trained on single texts, "
            "without a second input; leave the option out"
        )
    base = info.fields
    return Fields(
        id_field or base.id, text_field or base.text, (text_pair_field or base.text_pair) if info.uses_text_pairs else None
    )


def predict_file(
    model: str | os.PathLike | Predictor,
    input_path: str | os.PathLike,
    out: str | os.PathLike | IO[str] | None = None,
    *,
    id_field: str | None = None,
    text_field: str | None = None,
    text_pair_field: str | None = None,
    batch_size: int = 64,
    dtype: str = "float32",
    fmt: str | None = None,
    chunk_rows: int = 256,
    on_bad: Callable[[str], None] | None = None,
    progress: Callable[[int], None] | None = None,
    on_loaded: Callable[[Predictor], None] | None = None,
) -> PredictSummary:
    """Predict every usable row of ``input_path`` with ``model`` (a directory, see :func:`inspect_model`, or a loaded
    :class:`Predictor`) and write the records to ``out`` (a path: .jsonl or .csv, written whole or not at all; an open
    text stream, in ``fmt``; None: stdout as JSON lines).

    Rows are read ``chunk_rows`` at a time (at least ``batch_size``), predicted ``batch_size`` at a time and written
    before the next chunk is read. ``on_bad(message)`` is called for each skipped row with "FILE:LINE: problem";
    ``progress(n)`` after each chunk with the rows predicted in it; ``on_loaded(predictor)`` once the model is loaded.
    Everything that makes the whole file unusable (no model there, input missing or of an unknown type, a field the
    model needs absent, no usable row at all) raises an ImflError, before the model is loaded when it can be told
    then; nothing is written to a path ``out`` in that case."""
    started = time.perf_counter()
    input_path = Path(input_path)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size!r} is invalid; use an integer >= 1")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype {dtype!r} is unknown; use {', '.join(DTYPES)}")
    info = model.info if isinstance(model, Predictor) else inspect_model(model)
    fields = resolve_fields(info, id_field, text_field, text_pair_field)
    check_input(input_path, fields)
    if isinstance(out, (str, os.PathLike)):
        out = Path(out)
        fmt = check_output(out, input_path)
    elif fmt not in (None, "jsonl", "csv"):
        raise ConfigError(f"format {fmt!r} is unknown; use jsonl or csv")
    predictor = model if isinstance(model, Predictor) else load_predictor(info, dtype)
    summary = PredictSummary(out=out if isinstance(out, Path) else None, load_seconds=time.perf_counter() - started)
    if on_loaded is not None:
        on_loaded(predictor)
    chunk_rows = max(int(chunk_rows), batch_size)

    def bad(message: str) -> None:
        summary.skipped += 1
        if len(summary.problems) < 20:
            summary.problems.append(message)
        if on_bad is not None:
            on_bad(message)

    with _target(out) as fh:
        writer = None
        ids: list[str] = []
        texts: list[str] = []
        pairs: list[str] = []

        def flush() -> None:
            nonlocal writer
            if writer is None:  # created with the first good chunk: nothing at all is written for a file without one
                writer = _Writer(fh, fmt or "jsonl", predictor.labels)
            probs = predictor.predict_proba(texts, pairs if fields.text_pair is not None else None, batch_size)
            writer.write(ids, probs)
            summary.predicted += len(ids)
            if progress is not None:
                progress(len(ids))
            ids.clear()
            texts.clear()
            pairs.clear()

        for item_id, text, pair in _checked(input_path, fields):
            if item_id is None:
                bad(text)
                continue
            ids.append(item_id)
            texts.append(text)
            if pair is not None:
                pairs.append(pair)
            if len(ids) >= chunk_rows:
                flush()
        if ids:
            flush()
        if not summary.predicted:
            first = f" (first: {summary.problems[0]})" if summary.problems else ""
            raise DataError(
                f"{input_path}: no row could be predicted, {summary.skipped} bad rows{first}; fix the rows or "
                f"name the fields with --id-field/--text-field"
            )
    summary.seconds = time.perf_counter() - started
    return summary
