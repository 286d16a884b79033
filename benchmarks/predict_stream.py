"""Speed and memory of `imfl predict` on large files: rows/s and the peak RSS of the `imfl predict` process, for files of
several sizes, to show that memory does not grow with the number of rows (the file is streamed a chunk at a time).

    python benchmarks/predict_stream.py --data ../shared/data/fpb                      # 10,000 and 100,000 rows
    python benchmarks/predict_stream.py --data ../shared/data/fpb --rows 2000,20000 --model runs/fpb

Each input is a JSONL file of real FPB pool sentences, repeated with distinct ids, written to a temporary folder.
Without ``--model`` a tiny student is trained first, in a process of its own (60 pool sentences, one epoch,
max_length 64), and saved there.
`imfl predict MODEL INPUT --out OUT.jsonl` runs as a subprocess; its peak RSS is the kernel's (``wait4``), and its RSS
is also sampled every 0.2 s so the largest RSS of the first and of the second half of the run can be compared.
One JSON line per file size: rows, wall seconds, rows/s (all of it, and after loading as `imfl predict` reports it),
peak RSS and the halves' RSS in MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from _common import emit

REPO = Path(__file__).resolve().parents[1]


def write_input(path: Path, rows: list[dict], n: int) -> None:
    """``n`` JSONL rows cycling over ``rows``' texts, with ids <id>-<repeat> (all distinct)."""
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            r = rows[i % len(rows)]
            fh.write(json.dumps({"id": f"{r['id']}-{i // len(rows)}", "text": r["text"]}, ensure_ascii=False) + "\n")


def train_student(pool: list[dict], out: Path, threads: int) -> float:
    """A tiny real student saved to ``out``; returns the training seconds. Runs in its own process (``--train-to``):
    Linux starts a child's peak RSS (``ru_maxrss``) at its parent's RSS, so the parent of `imfl predict` must stay
    small for the peak measured to be that of `imfl predict`."""
    from imfl.student import Student  # only in the training process

    labels = sorted({r["label"] for r in pool})
    train, seen = [], {}
    for r in pool:
        if seen.get(r["label"], 0) < 20:
            seen[r["label"]] = seen.get(r["label"], 0) + 1
            train.append(r)
    start = time.perf_counter()
    student = Student(epochs=1, min_steps=0, batch_size=16, max_length=64, seed=0, num_threads=threads)
    student.fit([r["text"] for r in train], [labels.index(r["label"]) for r in train], len(labels), label_names=labels)
    student.save(out)
    return time.perf_counter() - start


def run_predict(model: Path, src: Path, out: Path, log: Path, batch_size: int) -> dict:
    """Run `imfl predict` on ``src``; its exit status, wall seconds, peak RSS and sampled RSS, and its last stderr line."""
    cmd = [sys.executable, "-m", "imfl", "predict", str(model), str(src), "--out", str(out), "--batch-size", str(batch_size)]
    samples: list[tuple[float, int]] = []
    start = time.perf_counter()
    with log.open("w", encoding="utf-8") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        ps = psutil.Process(proc.pid)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            try:
                samples.append((time.perf_counter() - start, ps.memory_info().rss))
            except psutil.Error:
                pass
            time.sleep(0.2)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    half = seconds / 2
    first = [rss for t, rss in samples if t < half]
    second = [rss for t, rss in samples if t >= half]
    lines = log.read_text(encoding="utf-8").strip().splitlines()
    return {
        "exit": proc.returncode,
        "seconds": seconds,
        "peak_rss_mib": usage.ru_maxrss / 1024,  # ru_maxrss: KiB on Linux
        "rss_first_half_mib": max(first, default=0) / 2**20,
        "rss_second_half_mib": max(second, default=0) / 2**20,
        "summary": lines[-1] if lines else "",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "fpb", help="folder with pool.jsonl")
    ap.add_argument("--rows", default="10000,100000", help="comma-separated input sizes (rows)")
    ap.add_argument("--model", type=Path, default=None, help="a model directory for imfl predict (default: train a tiny student)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the student trained here (saved with it, so "
        "also what imfl predict uses); 1 on a CPU shared with other busy processes",
    )
    ap.add_argument("--batch-size", type=int, default=64, help="imfl predict --batch-size")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON lines here as well")
    ap.add_argument("--train-to", type=Path, default=None, help=argparse.SUPPRESS)  # the training subprocess
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.rows.split(",")]

    with open(args.data / "pool.jsonl", encoding="utf-8") as fh:
        pool = [json.loads(line) for line in fh if line.strip()]
    if args.train_to is not None:
        print(train_student(pool, args.train_to, args.threads))
        return 0
    with tempfile.TemporaryDirectory(prefix="imfl-predict-bench-") as tmp:
        tmp = Path(tmp)
        model, train_seconds = args.model, None
        if model is None:
            model = tmp / "student"
            done = subprocess.run(
                [sys.executable, __file__, "--data", str(args.data), "--threads", str(args.threads), "--train-to", str(model)],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                print(f"training the student failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                return 1
            train_seconds = round(float(done.stdout.split()[-1]), 1)
        for n in sizes:
            src, out = tmp / f"input-{n}.jsonl", tmp / f"predictions-{n}.jsonl"
            write_input(src, pool, n)
            result = run_predict(model, src, out, tmp / f"predict-{n}.log", args.batch_size)
            written = 0
            if out.is_file():
                with out.open(encoding="utf-8") as fh:
                    written = sum(1 for _ in fh)
            reported = re.search(r"model loaded in ([\d.]+) s, then (\d+) rows/s", result["summary"])
            emit(
                {
                    "rows": n,
                    "written": written,
                    "exit": result["exit"],
                    "model": "tiny student (trained here)" if args.model is None else str(args.model),
                    "train_seconds": train_seconds,
                    "input_mib": round(src.stat().st_size / 2**20, 1),
                    "seconds": round(result["seconds"], 1),
                    "rows_per_s": round(n / result["seconds"], 1),
                    "load_seconds": float(reported.group(1)) if reported else None,
                    "rows_per_s_after_load": int(reported.group(2)) if reported else None,
                    "peak_rss_mib": round(result["peak_rss_mib"]),
                    "rss_first_half_mib": round(result["rss_first_half_mib"]),
                    "rss_second_half_mib": round(result["rss_second_half_mib"]),
                    "cpu": os.cpu_count(),
                    "batch_size": args.batch_size,
                },
                args.out,
            )
            if result["exit"] != 0:
                print(f"imfl predict exited with {result['exit']}: {result['summary']}", file=sys.stderr)
                return 1
            src.unlink()
            out.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
