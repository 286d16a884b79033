"""Labels made elsewhere: write the waiting round's human batch to a file (CSV, JSONL, or Label Studio's JSON
task list) and read labels back, row by row, through the same checks as the web page. A bad row never stops
an import: it is reported (file:line or task number, and why) and the good rows go in."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from imfl.errors import DataError
from imfl.people import Labeling, Rejected

FORMATS = ("csv", "jsonl", "labelstudio")


def guess_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".json":
        return "labelstudio"
    raise DataError(f"{path}: cannot tell the format from {suffix or 'no suffix'!r}; use .csv, .jsonl, or .json (Label Studio)")


def export_batch(labeling: Labeling, path: str | Path, fmt: str | None = None) -> int:
    """Write the pending items of the waiting round (id, text, text_pair, an empty label) to ``path``; returns
    how many. Label Studio gets one task per item with ``data`` = {id, text, text_pair}."""
    path = Path(path)
    fmt = fmt or guess_format(path)
    if fmt not in FORMATS:
        raise DataError(f"format {fmt!r} is unknown; use one of {', '.join(FORMATS)}")
    status = labeling.status()
    if status["state"] != "labeling":
        raise DataError(f"no round is waiting for human labels (the run is {status['state']}); run `imfl run` first")
    items = labeling.pending_items()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with tmp.open("w", encoding="utf-8", newline="") as fh:
        if fmt == "csv":
            w = csv.writer(fh)
            w.writerow(["id", "text", "text_pair", "label"])
            w.writerows([i["id"], i["text"], i["text_pair"] or "", ""] for i in items)
        elif fmt == "jsonl":
            for i in items:
                fh.write(json.dumps({**i, "label": None}, ensure_ascii=False) + "\n")
        else:
            tasks = [{"id": n + 1, "data": {k: v for k, v in i.items() if v is not None}} for n, i in enumerate(items)]
            json.dump(tasks, fh, ensure_ascii=False, indent=1)
    tmp.replace(path)
    return len(items)


@dataclass
class ImportReport:
    accepted: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (where in the file, why)


def import_labels(labeling: Labeling, path: str | Path, annotator: str, fmt: str | None = None) -> ImportReport:
    """Add the labels in ``path`` (rows with ``id`` and ``label``; or a Label Studio export) as ``annotator``'s."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path")
    fmt = fmt or guess_format(path)
    report = ImportReport()
    for where, item_id, label, problem in _rows(path, fmt):
        if problem is None:
            try:
                labeling.label(annotator, item_id, label)
                report.accepted += 1
                continue
            except Rejected as exc:
                problem = str(exc)
        report.rejected.append((where, problem))
    return report


def _rows(path: Path, fmt: str):
    """(where, item id, label, problem) per row; problem is None for a row that can be tried."""
    try:
        if fmt == "csv":
            with path.open(encoding="utf-8", newline="") as fh:
                reader = csv.DictReader(fh)
                if not reader.fieldnames or not {"id", "label"} <= set(reader.fieldnames):
                    raise DataError(f"{path}: the header needs the columns id and label (found {', '.join(reader.fieldnames or [])})")
                for row in reader:
                    yield _checked(f"{path}:{reader.line_num}", row.get("id"), row.get("label"))
        elif fmt == "jsonl":
            with path.open(encoding="utf-8") as fh:
                for lineno, line in enumerate(fh, 1):
                    where = f"{path}:{lineno}"
                    if not line.strip():
                        continue
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        yield where, None, None, f"not valid JSON ({exc.msg})"
                        continue
                    if not isinstance(row, dict):
                        yield where, None, None, "not a JSON object"
                        continue
                    yield _checked(where, row.get("id"), row.get("label"))
        elif fmt == "labelstudio":
            yield from _label_studio(path)
        else:
            raise DataError(f"format {fmt!r} is unknown; use one of {', '.join(FORMATS)}")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save the file as UTF-8") from None


def _checked(where: str, item_id, label):
    if not isinstance(item_id, str) or not item_id.strip():
        return where, None, None, "no id"
    if not isinstance(label, str) or not label.strip():
        return where, item_id, None, f"item {item_id!r} has no label"
    return where, item_id.strip(), label.strip(), None


def _label_studio(path: Path):
    """Label Studio's JSON export: a list of tasks, each with ``data.id`` and an annotation whose result holds
    one choice (the last non-cancelled annotation counts)."""
    try:
        tasks = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); export the tasks from Label Studio as JSON") from None
    if not isinstance(tasks, list):
        raise DataError(f"{path}: expected a JSON list of Label Studio tasks")
    for n, task in enumerate(tasks, 1):
        where = f"{path}: task {n}"
        data = task.get("data") if isinstance(task, dict) else None
        if not isinstance(data, dict):
            yield where, None, None, "no data object"
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
            yield where, data.get("id"), None, f"item {data.get('id')!r} needs exactly one chosen label (found {len(choices)})"
            continue
        yield _checked(where, data.get("id"), choices[0])
