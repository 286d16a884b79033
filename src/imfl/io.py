"""Reading and writing the files imfl exchanges with people and other tools, in one place.

Readers: data files as rows (``read_rows``: JSONL, CSV or Parquet, streamed, each row with its line), JSONL text as
objects or one-line problems (``json_lines``, ``jsonl_objects``), label files people bring back (``label_rows``:
CSV, JSONL or Label Studio's JSON export, each row with where it is and what is wrong with it). Writers: rows as
JSONL or CSV (``write_jsonl``, ``write_csv``) and one JSON document (``write_json``), always to a temporary file
first, renamed over the target when complete, so a reader never sees half a file and a crash leaves the previous one.

JSONL and CSV are read as utf-8-sig: a byte order mark at the start (as some Windows tools write) is not data.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from imfl.errors import DataError

LABEL_FORMATS = ("csv", "jsonl", "labelstudio")


def json_lines(lines: Iterable[str]) -> Iterator[tuple[int, dict | str]]:
    """(line, row) per non-blank line of JSONL text; the row is a message instead when the line is not a JSON
    object (the caller decides whether that stops the read or skips the line)."""
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield lineno, f"not valid JSON ({exc.msg} at column {exc.colno})"
            continue
        yield lineno, row if isinstance(row, dict) else f"expected a JSON object per line, got {type(row).__name__}"


def jsonl_objects(path: Path) -> Iterator[tuple[int, dict | str]]:
    """``json_lines`` of a JSONL file, read as a stream."""
    with path.open(encoding="utf-8-sig") as fh:
        yield from json_lines(fh)


def _rows_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for lineno, row in jsonl_objects(path):
        if isinstance(row, str):
            raise DataError(f"{path}:{lineno}: {row}; fix or remove the line")
        yield lineno, row


def _rows_csv(path: Path) -> Iterator[tuple[int, dict]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            # The reader's line_num is the line the record ended on: right for one-line records.
            yield reader.line_num, {k: (v if v != "" else None) for k, v in row.items() if k is not None}


def _rows_parquet(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow; install it with `pip install pyarrow`") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    lineno = 0
    for batch in pf.iter_batches(batch_size=10_000):
        for row in batch.to_pylist():
            lineno += 1
            yield lineno, row


_READERS = {".jsonl": _rows_jsonl, ".json": _rows_jsonl, ".ndjson": _rows_jsonl, ".csv": _rows_csv, ".parquet": _rows_parquet}


def read_rows(path: Path, what: str = "file") -> Iterator[tuple[int, dict]]:
    """Yield (line number, row dict) from a JSONL, CSV or Parquet file, chosen by its suffix."""
    path = Path(path)
    if not path.is_file():
        hint = f"set data.{what} to an existing file" if what in ("pool", "test") else "check the path"
        raise DataError(f"{path}: {what} file not found; {hint}")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unknown file type {path.suffix!r}; use .jsonl, .csv or .parquet")
    try:
        yield from reader(path)
    except UnicodeDecodeError:
        raise DataError(not_utf8(path)) from None


def not_utf8(path: Path) -> str:
    """Where a file's first byte that is not UTF-8 is, as a message: the decoder's error only gives a position in the
    chunk it was decoding. A multi-byte character never spans a newline byte, so each line can be decoded alone."""
    offset = 0
    with Path(path).open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                column = len(line[: exc.start].decode("utf-8")) + 1
                return (
                    f"{path}:{lineno}: byte {line[exc.start]:#04x} at byte offset {offset + exc.start} (column {column} "
                    "of the line) is not UTF-8; save the file as UTF-8"
                )
            offset += len(line)
    return f"{path}: not UTF-8 text; save the file as UTF-8"  # the file changed since the failed read


def read_text(path: Path) -> str:
    """The whole file as text (without the byte-order mark Excel puts before a "CSV UTF-8" file)."""
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}:{line}: not UTF-8 text; save the file as UTF-8") from None


def label_rows(path: Path, fmt: str, text: str):
    """(where, ref, id, label, problem) per row, id and label as the file has them; ``where`` is FILE:LINE (or
    FILE: task N) for the report, ``ref`` the same within the file (line N, task N); problem is None for a row
    that can be checked."""
    lines = io.StringIO(text, newline=None)  # universal newlines, as open() reads
    if fmt == "csv":
        reader = csv.reader(lines)
        header = [name.strip() for name in next(reader)]
        if not {"id", "label"} <= set(header):
            raise DataError(f"{path}:1: the header needs the columns id and label (found {', '.join(header)})")
        start = 2
        try:
            for values in reader:  # a quoted text may span lines: a row is reported by its first line
                if any(v.strip() for v in values):  # blank lines and the empty rows spreadsheets leave are no rows
                    row = dict(zip(header, values))
                    yield f"{path}:{start}", f"line {start}", row.get("id"), row.get("label"), None
                start = reader.line_num + 1
        except csv.Error as exc:  # an unclosed quote makes the rest of the file one field, too long at some point
            raise DataError(f"{path}:{start}: not readable as CSV ({exc}); check the quotes from this line on") from None
    elif fmt == "jsonl":
        for lineno, obj in json_lines(lines):
            where, ref = f"{path}:{lineno}", f"line {lineno}"
            if isinstance(obj, str):
                yield where, ref, None, None, obj
            else:
                yield where, ref, obj.get("id"), obj.get("label"), None
    elif fmt == "labelstudio":
        yield from _label_studio(path, text)
    else:
        raise DataError(f"format {fmt!r} is unknown; use one of {', '.join(LABEL_FORMATS)}")


def _label_studio(path: Path, text: str):
    """Label Studio's JSON export: a list of tasks, each with ``data.id`` and an annotation whose result holds
    one choice (the last non-cancelled annotation counts)."""
    try:
        tasks = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); export the tasks from Label Studio as JSON") from None
    if not isinstance(tasks, list):
        raise DataError(f"{path}: expected a JSON list of Label Studio tasks")
    for n, task in enumerate(tasks, 1):
        where, ref = f"{path}: task {n}", f"task {n}"
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            yield where, ref, None, None, "no data object"
            continue
        choices = []
        for ann in task.get("annotations") or []:
            if not isinstance(ann, dict) or ann.get("was_cancelled"):
                continue
            for res in ann.get("result") or []:
                value = res.get("value") if isinstance(res, dict) else None
                if isinstance(value, dict) and value.get("choices"):
                    choices = value["choices"]
        if len(choices) != 1:
            why = f"item {data.get('id')!r} needs exactly one chosen label (found {len(choices)})"
            yield where, ref, data.get("id"), None, why
            continue
        yield where, ref, data.get("id"), choices[0], None


@contextmanager
def _replace_when_written(path: Path) -> Iterator[TextIO]:
    """A text handle on a temporary file beside ``path``, renamed to ``path`` when the block ends without error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        with tmp.open("w", encoding="utf-8", newline="") as fh:
            yield fh
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """``rows`` as one JSON object per line (UTF-8, not ASCII-escaped)."""
    with _replace_when_written(Path(path)) as fh:
        fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]], columns: list[str] | None = None) -> None:
    """``rows`` as CSV with a header (``columns``, default: every key in the order first seen); a value that is a
    list or a dict is written as JSON, a missing one empty."""
    rows = list(rows)
    columns = columns or list(dict.fromkeys(k for r in rows for k in r)) or ["id"]
    with _replace_when_written(Path(path)) as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()} for r in rows)


def write_json(path: Path, data: Any) -> None:
    """``data`` as one JSON document (UTF-8, indented one space a level)."""
    with _replace_when_written(Path(path)) as fh:
        json.dump(data, fh, ensure_ascii=False, indent=1)
