"""`imfl predict MODEL INPUT` as a user runs it: a real student (the bundled MiniLM, trained briefly on real FPB
sentences) saved with Student.save, in a run folder and exported as a Hugging Face classifier; JSONL, CSV and Parquet
inputs with bad rows; the unusable inputs that must exit 2 without touching anything. No mocks."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import imfl, read_jsonl

pytestmark = pytest.mark.slow

TOL = 1e-5  # float32 probabilities: the same text in another batch, or a reloaded student, moves them by ~1e-7


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fpb_rows):
    """One tiny student (60 FPB pool sentences, 20 per label, one epoch), saved as a Student.save directory and as the
    adapter of a run folder whose config names its own fields (uid, sentence); and 40 FPB test sentences with the
    student's probabilities for them, computed in this process."""
    from imfl.student import Student

    labels = sorted({r["label"] for r in fpb_rows["pool"]})
    train, seen = [], {}
    for r in fpb_rows["pool"]:
        if seen.get(r["label"], 0) < 20:
            seen[r["label"]] = seen.get(r["label"], 0) + 1
            train.append(r)
    student = Student(epochs=1, min_steps=0, batch_size=16, max_length=64, seed=0, num_threads=1)
    student.fit([r["text"] for r in train], [labels.index(r["label"]) for r in train], len(labels), label_names=labels)
    base = tmp_path_factory.mktemp("predict-model")
    student.save(base / "student")
    run = base / "run"
    student.save(run / "adapter")
    (run / "config.toml").write_text(
        'name = "run"\n\n[data]\npool = "pool.jsonl"\nid_field = "uid"\ntext_field = "sentence"\n', encoding="utf-8"
    )
    rows = fpb_rows["test"][:40]
    proba = student.predict_proba([r["text"] for r in rows])
    return {
        "student": base / "student",
        "run": run,
        "labels": labels,
        "rows": rows,
        "expected": {r["id"]: p for r, p in zip(rows, proba)},
        "base": base,
    }


def check_records(records: list[dict], trained, ids: list[str]) -> None:
    """Records (id, label, probs) in input order, each agreeing with the student's own probabilities."""
    assert [r["id"] for r in records] == ids
    labels = trained["labels"]
    for r in records:
        assert set(r["probs"]) == set(labels)
        got = np.array([r["probs"][label] for label in labels])
        want = trained["expected"][r["id"]]
        assert np.abs(got - want).max() < TOL, (r["id"], got, want)
        assert r["label"] == labels[int(np.argmax(want))]
        assert abs(got.sum() - 1.0) < 1e-6


def bad_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.endswith("; skipped")]


def test_jsonl_to_stdout_predicts_the_good_rows_and_names_the_bad_ones(tmp_path, trained):
    rows = trained["rows"][:12]
    lines = [json.dumps({"id": r["id"], "text": r["text"]}) for r in rows]
    lines[2] = json.dumps({"id": "no-text"})  # line 3: no text
    lines[4] = json.dumps({"text": rows[4]["text"]})  # line 5: no id
    lines[6] = '{"id": "broken", "text": "unterminated'  # line 7: not JSON
    lines[8] = json.dumps({"id": "blank", "text": "   "})  # line 9: empty text
    lines[10] = json.dumps([rows[10]["id"], rows[10]["text"]])  # line 11: not an object
    src = tmp_path / "new.jsonl"
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    before = src.read_bytes()

    r = imfl("predict", str(trained["student"]), str(src))

    assert r.returncode == 1, r.stderr[-3000:]  # rows were skipped
    assert "Traceback" not in r.stderr
    good = [row["id"] for i, row in enumerate(rows) if i not in (2, 4, 6, 8, 10)]
    check_records([json.loads(line) for line in r.stdout.splitlines()], trained, good)
    reported = bad_lines(r.stderr)
    assert [line.split(": ", 1)[0] for line in reported] == [f"{src}:{n}" for n in (3, 5, 7, 9, 11)]
    assert "'text'" in reported[0] and "'id'" in reported[1] and "not valid JSON" in reported[2]
    assert "JSON object" in reported[4]
    assert "predicted 7 rows, skipped 5 bad rows" in r.stderr
    assert src.read_bytes() == before


def test_csv_to_csv_file_with_a_column_per_label(tmp_path, trained):
    rows = trained["rows"][:10]
    src = tmp_path / "new.csv"
    with src.open("w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text", "note"])
        for i, row in enumerate(rows):
            w.writerow([row["id"], "" if i == 3 else row["text"], "x"] if i != 6 else ["", row["text"], "x"])
    out = tmp_path / "predictions.csv"

    r = imfl("predict", str(trained["student"]), str(src), "--out", str(out))

    assert r.returncode == 1, r.stderr[-3000:]
    assert r.stdout == ""  # everything went to --out
    # CSV lines: the header is line 1, so rows 3 and 6 (0-based) are lines 5 and 8
    assert [line.split(": ", 1)[0] for line in bad_lines(r.stderr)] == [f"{src}:5", f"{src}:8"]
    with out.open(encoding="utf-8", newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["id", "label", *(f"p_{label}" for label in trained["labels"])]
    records = [{"id": t[0], "label": t[1], "probs": dict(zip(trained["labels"], map(float, t[2:])))} for t in table[1:]]
    check_records(records, trained, [row["id"] for i, row in enumerate(rows) if i not in (3, 6)])
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # an ordinary file, not the temporary file's 0600
    assert not list(tmp_path.glob("*.part"))


def test_parquet_input_with_null_fields(tmp_path, trained):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = trained["rows"][10:20]
    ids = [row["id"] for row in rows]
    texts = [row["text"] for row in rows]
    texts[1] = None
    ids[5] = None
    src = tmp_path / "new.parquet"
    pq.write_table(pa.table({"id": ids, "text": texts}), src)
    out = tmp_path / "predictions.jsonl"

    r = imfl("predict", str(trained["student"]), str(src), "--out", str(out))

    assert r.returncode == 1, r.stderr[-3000:]
    assert [line.split(": ", 1)[0] for line in bad_lines(r.stderr)] == [f"{src}:2", f"{src}:6"]  # row numbers
    check_records(read_jsonl(out), trained, [row["id"] for i, row in enumerate(rows) if i not in (1, 5)])


def test_run_folder_uses_the_run_field_settings(tmp_path, trained):
    rows = trained["rows"][20:30]
    src = tmp_path / "new.jsonl"
    src.write_text("".join(json.dumps({"uid": r["id"], "sentence": r["text"]}) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "predictions.jsonl"

    r = imfl("predict", str(trained["run"]), str(src), "--out", str(out))

    assert r.returncode == 0, r.stderr[-3000:]  # nothing skipped
    assert "predicted 10 rows, skipped 0 bad rows" in r.stderr and f"wrote {out}" in r.stderr
    check_records(read_jsonl(out), trained, [row["id"] for row in rows])


def test_exported_hf_classifier(tmp_path, trained):
    from imfl.export import export_hf

    model = export_hf(trained["student"], tmp_path / "classifier")
    rows = trained["rows"][30:40]
    src = tmp_path / "new.jsonl"
    src.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in rows), encoding="utf-8")

    r = imfl("predict", str(model), str(src))

    assert r.returncode == 0, r.stderr[-3000:]
    check_records([json.loads(line) for line in r.stdout.splitlines()], trained, [row["id"] for row in rows])


def test_progress_bar_on_a_terminal_leaves_the_predictions_on_stdout(tmp_path, trained):
    """`imfl predict M IN > out.jsonl` typed at a terminal: the bar is drawn on the terminal (stderr) and every
    prediction goes to the redirected stdout, none to the screen."""
    rows = trained["rows"][:20]
    src = tmp_path / "new.jsonl"
    src.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in rows), encoding="utf-8")
    master, slave = pty.openpty()
    screen = bytearray()

    def read_screen() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            screen.extend(data)

    reader = threading.Thread(target=read_screen, daemon=True)
    reader.start()
    try:
        r = subprocess.run(
            [sys.executable, "-m", "imfl", "predict", str(trained["student"]), str(src)],
            stdout=subprocess.PIPE,
            stderr=slave,
            env=dict(os.environ, TERM="xterm", COLUMNS="120"),
            timeout=900,
        )
    finally:
        os.close(slave)
        reader.join(5)
        os.close(master)
    shown = screen.decode("utf-8", "replace")
    assert r.returncode == 0, shown[-3000:]
    check_records([json.loads(line) for line in r.stdout.decode().splitlines()], trained, [row["id"] for row in rows])
    assert "20 rows" in shown and "predicted 20 rows" in shown
    assert '"probs"' not in shown


def test_predict_file_streams_a_chunk_at_a_time(tmp_path, trained):
    """The file is read, predicted and written a chunk at a time: after each chunk the output holds exactly the rows
    predicted so far (memory holds a chunk, not the file)."""
    from imfl.predict import load_predictor, predict_file

    rows = trained["rows"]
    src = tmp_path / "new.jsonl"
    src.write_text(
        "".join(json.dumps({"id": f"{r['id']}-{k}", "text": r["text"]}) + "\n" for k in range(3) for r in rows), encoding="utf-8"
    )  # 120 rows
    sink = io.StringIO()
    seen: list[tuple[int, int]] = []
    predictor = load_predictor(trained["student"])

    def progress(n: int) -> None:
        seen.append((n, sink.getvalue().count("\n")))

    summary = predict_file(predictor, src, sink, batch_size=16, chunk_rows=32, progress=progress)

    assert summary.predicted == 120 and summary.skipped == 0
    assert [n for n, _ in seen] == [32, 32, 32, 24]
    assert [lines for _, lines in seen] == [32, 64, 96, 120]
    records = [json.loads(line) for line in sink.getvalue().splitlines()]
    assert [r["id"] for r in records] == [f"{r['id']}-{k}" for k in range(3) for r in rows]
    for r in records:
        got = np.array([r["probs"][label] for label in trained["labels"]])
        assert np.abs(got - trained["expected"][r["id"].rsplit("-", 1)[0]]).max() < TOL


def test_all_rows_bad_exits_2_and_keeps_the_old_output(tmp_path, trained):
    src = tmp_path / "new.jsonl"
    src.write_text('{"id": "a"}\n{"id": "b", "text": ""}\nnot json\n', encoding="utf-8")
    out = tmp_path / "predictions.jsonl"
    out.write_text("old predictions\n", encoding="utf-8")

    r = imfl("predict", str(trained["student"]), str(src), "--out", str(out))

    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert "no row could be predicted" in r.stderr.strip().splitlines()[-1]
    assert out.read_text(encoding="utf-8") == "old predictions\n"
    assert not list(tmp_path.glob("*.part"))


def _unusable(tmp_path: Path, trained, case: str) -> tuple[list[str], Path | None, str]:
    """(arguments after the model, the input file that must stay as it is, a word the message must hold)."""
    good = "".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in trained["rows"][:3])
    if case == "missing file":
        return [str(tmp_path / "nowhere.jsonl")], None, "not found"
    if case == "unknown suffix":
        src = tmp_path / "new.txt"
        src.write_text(good, encoding="utf-8")
        return [str(src)], src, "unknown file type"
    if case == "no text field":
        src = tmp_path / "new.csv"
        src.write_text("id,sentence\n1,Profit rose.\n2,Sales fell.\n", encoding="utf-8")
        return [str(src)], src, "--text-field"
    if case == "out is the input":
        src = tmp_path / "new.jsonl"
        src.write_text(good, encoding="utf-8")
        return [str(src), "--out", str(tmp_path / "." / "new.jsonl")], src, "is the input file"
    if case == "unknown output type":
        src = tmp_path / "new.jsonl"
        src.write_text(good, encoding="utf-8")
        return [str(src), "--out", str(tmp_path / "predictions.parquet")], src, "unknown output type"
    if case == "not UTF-8":
        src = tmp_path / "new.jsonl"
        src.write_bytes(good.encode() + '{"id": "x", "text": "caf\u00e9"}\n'.encode("latin-1"))
        return [str(src)], src, f"new.jsonl:{good.count(chr(10)) + 1}: byte 0xe9"
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case", ["missing file", "unknown suffix", "no text field", "out is the input", "unknown output type", "not UTF-8"]
)
def test_unusable_input_exits_2_with_one_line(tmp_path, trained, case):
    args, src, words = _unusable(tmp_path, trained, case)
    before = src.read_bytes() if src else None
    mtime = src.stat().st_mtime_ns if src else None
    files = sorted(tmp_path.iterdir())

    r = imfl("predict", str(trained["student"]), *args)

    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imfl: error:") and words in lines[0], r.stderr
    assert r.stdout == ""
    if src:
        assert src.read_bytes() == before and src.stat().st_mtime_ns == mtime
    assert sorted(tmp_path.iterdir()) == files  # nothing written next to it either


def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path, trained):
    rows = trained["rows"][:3]
    src = tmp_path / "from-excel.jsonl"
    src.write_text("".join(json.dumps({"id": r["id"], "text": r["text"]}) + "\n" for r in rows), encoding="utf-8-sig")
    r = imfl("predict", str(trained["student"]), str(src))
    assert r.returncode == 0, r.stderr[-3000:]
    check_records([json.loads(line) for line in r.stdout.splitlines()], trained, [row["id"] for row in rows])


def test_a_folder_that_is_no_model_exits_2(tmp_path, trained):
    src = tmp_path / "new.jsonl"
    src.write_text('{"id": "a", "text": "Profit rose."}\n', encoding="utf-8")
    r = imfl("predict", str(tmp_path), str(src))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a model directory" in lines[0]
