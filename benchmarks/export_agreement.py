"""Does the exported model predict what the run's student predicts? `imfl export RUN --format hf` into a temporary
folder, then every row of a test file through transformers' text-classification pipeline (in a process where imfl
cannot be imported) and through `imfl predict RUN`; prints one JSON line: rows, rows with the same label, the largest
probability difference, the size of the export and each side's seconds.

    python benchmarks/export_agreement.py runs/demo-fpb --test ../shared/data/fpb/test.jsonl
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import emit

PIPELINE = r"""
import json, sys
sys.modules["imfl"] = None  # the export must stand on transformers alone
from transformers import pipeline

model_dir, texts_file, out_file = sys.argv[1:]
texts = [json.loads(line)["text"] for line in open(texts_file, encoding="utf-8")]
classify = pipeline("text-classification", model=model_dir, device="cpu")
with open(out_file, "w", encoding="utf-8") as fh:
    for r in classify(texts, top_k=None, truncation=True, batch_size=32):
        fh.write(json.dumps({d["label"]: d["score"] for d in r}) + "\n")
"""


def timed_run(cmd: list[str]) -> float:
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed:\n{p.stderr[-2000:]}")
    return time.perf_counter() - start


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a finished run folder")
    ap.add_argument("--test", type=Path, required=True, help="JSONL file with id and text fields")
    ap.add_argument("--out", type=Path, help="also append the JSON line to this file")
    args = ap.parse_args(argv)
    imfl = [sys.executable, "-m", "imfl"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        exported = tmp / "model"
        export_s = timed_run([*imfl, "export", str(args.run), "--format", "hf", "--out", str(exported)])
        pipeline_s = timed_run([sys.executable, "-c", PIPELINE, str(exported), str(args.test), str(tmp / "pipeline.jsonl")])
        predict_s = timed_run([*imfl, "predict", str(args.run), str(args.test), "--out", str(tmp / "imfl.jsonl")])
        by_pipeline, by_imfl = read_jsonl(tmp / "pipeline.jsonl"), read_jsonl(tmp / "imfl.jsonl")
        size = sum(p.stat().st_size for p in exported.iterdir())
    same = sum(max(a, key=a.get) == b["label"] for a, b in zip(by_pipeline, by_imfl))
    worst = max(abs(a[k] - b["probs"][k]) for a, b in zip(by_pipeline, by_imfl) for k in b["probs"])
    emit(
        {
            "run": str(args.run),
            "test": str(args.test),
            "rows": len(by_imfl),
            "same_label": same,
            "max_prob_diff": float(f"{worst:.2g}"),
            "export_mb": round(size / 2**20, 1),
            "export_s": round(export_s, 1),
            "pipeline_s": round(pipeline_s, 1),
            "imfl_predict_s": round(predict_s, 1),
        },
        args.out,
    )


if __name__ == "__main__":
    main()
