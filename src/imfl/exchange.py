"""Labels made elsewhere: write the waiting round's human batch to a file (CSV, JSONL, or Label Studio's JSON
task list) and read labels back, row by row, through the same checks as the web page. A bad row never stops
an import: it is reported (file:line or task number, what is wrong, the values as the file has them) and the
good rows go in. A file that cannot be used as a whole (not UTF-8, no id/label header, no rows), or a run that
waits for no labels, stops the import before anything goes in: the file is read completely first."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from imfl.errors import DataError
from imfl.io import LABEL_FORMATS, label_rows, read_text, write_csv, write_json, write_jsonl
from imfl.people import Labeling, Rejected


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
    if fmt not in LABEL_FORMATS:
        raise DataError(f"format {fmt!r} is unknown; use one of {', '.join(LABEL_FORMATS)}")
    status = labeling.status()
    if status["state"] != "labeling":
        raise DataError(f"no round is waiting for human labels (the run is {status['state']}); run `imfl run` first")
    items = labeling.pending_items()
    if fmt == "csv":
        rows = ({**i, "text_pair": i["text_pair"] or "", "label": ""} for i in items)
        write_csv(path, rows, ["id", "text", "text_pair", "label"])
    elif fmt == "jsonl":
        write_jsonl(path, ({**i, "label": None} for i in items))
    else:
        tasks = [{"id": n + 1, "data": {k: v for k, v in i.items() if v is not None}} for n, i in enumerate(items)]
        write_json(path, tasks)
    return len(items)


@dataclass
class ImportReport:
    accepted: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (where in the file, why)


def import_labels(labeling: Labeling, path: str | Path, annotator: str, fmt: str | None = None) -> ImportReport:
    """Add the labels in ``path`` (rows with ``id`` and ``label``; or a Label Studio export) as ``annotator``'s.
    A later row for an item an earlier row labeled is a duplicate (reported, not imported); a row after one that
    was rejected for the same item (a corrected label, say) is tried."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path")
    fmt = fmt or guess_format(path)
    text = read_text(path)
    rows = list(label_rows(path, fmt, text)) if text.strip() else []
    if not rows:
        what = "the file is empty" if not text.strip() else f"no {'tasks' if fmt == 'labelstudio' else 'rows'} in the file"
        raise DataError(f"{path}: nothing to import: {what}; label the file `imfl export-batch` wrote and import that")
    state = labeling.status()["state"]
    if state != "labeling":
        raise DataError(
            f"{path}: nothing imported: no round is waiting for human labels (the run is {state}); run `imfl run` first"
        )
    report = ImportReport()
    imported: dict[str, str] = {}  # item id -> the row that labeled it ("line 3", "task 2")
    for where, ref, raw_id, raw_label, problem in rows:
        item_id = _item_id(raw_id)
        problem = problem or _problem(raw_id, item_id, raw_label, labeling.labels, imported)
        if problem is None:
            assert item_id is not None and isinstance(raw_label, str)  # what _problem checked
            try:
                labeling.label(annotator, item_id, raw_label.strip())
                imported[item_id] = ref
                report.accepted += 1
                continue
            except Rejected as exc:  # the store's verdict names the id as compared; say how the file spells it
                problem = str(exc) if item_id == raw_id else f"{exc} (the file has {raw_id!r})"
        report.rejected.append((where, problem))
    return report


def _item_id(raw) -> str | None:
    """The pool id a row's id stands for: its text without surrounding spaces, or an integer's digits (the pool
    loader reads number ids so, and spreadsheets and data frames turn digit ids into numbers); None otherwise."""
    if type(raw) is int:  # not a bool
        return str(raw)
    return raw.strip() if isinstance(raw, str) else None


def _problem(raw_id, item_id: str | None, raw_label, labels: tuple[str, ...], imported: dict[str, str]) -> str | None:
    """Why a row cannot be tried, with its values as the file has them; None if it can."""
    if raw_id is not None and item_id is None:
        return f"the id must be text, as in the exported batch (found {raw_id!r})"
    if not item_id:
        return "no id: each row needs the item's id (as in the exported batch) and a label"
    if item_id in imported:
        return f"duplicate of {imported[item_id]} (item {item_id!r} was imported from there)"
    if raw_label is None or isinstance(raw_label, str) and not raw_label.strip():
        return f"item {raw_id!r} has no label"
    if not isinstance(raw_label, str) or raw_label.strip() not in labels:
        return f"label {raw_label!r} is not one of {', '.join(labels)}"
    return None
