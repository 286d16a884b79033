"""A pool much larger than what the process holds: peak RSS of a whole `imfl run` as the pool grows.

    python benchmarks/big_pool.py --rows 100000,1000000 --text-bytes 2000      # ~2 GB pool file at 1M rows

For each size it writes a synthetic JSONL pool (``--rows`` rows of about ``--text-bytes`` bytes of text, three labels)
and a 500-row test file, then runs ``imfl run`` on it: one round of the paper's loop (``strategy = "imfl"``, so no LLM
is loaded), 100 human labels from the simulated expert, the default student trained for 2 epochs. The run reads,
checks and copies the pool as a stream, reads texts back from
its store a window at a time, and holds per item only its id and its embedding (memory-mapped).
Memory is reported three ways: peak RSS as the kernel counts it, and the peaks of its two parts, the process's own
(anonymous) memory and the pages of mapped files (the embeddings), which the kernel can drop and read again.

Embedding a million items takes hours on 2 cores, so the embeddings are not computed: random unit vectors are put in
the embedding cache under the key the run looks up (the key is still computed from every text, as in any run). The
selection, training and evaluation are real; the student's accuracy on random words means nothing.

``--src`` runs another checkout's ``src`` (e.g. a worktree of an older commit) for a before/after comparison.
Prints one line per size: rows, pool file size, wall time, peak memory. Run sizes smallest first (the RSS peak is
the largest of this script's children so far).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _common import emit

LABELS = ("neutral", "positive", "negative")


def write_pool(path: Path, rows: int, text_bytes: int, seed: int, prefix: str) -> None:
    rng = np.random.default_rng(seed)
    words = np.array([f"w{i}" for i in range(5_000)])
    n_words = max(1, text_bytes // 6)
    with path.open("w", encoding="utf-8") as fh:
        for start in range(0, rows, 10_000):
            n = min(10_000, rows - start)
            picks = rng.integers(0, len(words), size=(n, n_words))
            labels = rng.integers(0, 3, size=n)
            fh.writelines(
                json.dumps({"id": f"{prefix}{start + i}", "text": " ".join(words[picks[i]]), "label": LABELS[labels[i]]}) + "\n"
                for i in range(n)
            )


def seed_embeddings(pool: Path, cache: Path) -> None:
    """Random unit vectors where the run will look for the pool's embeddings."""
    from imfl.config import DataConfig
    from imfl.data import iter_examples
    from imfl.embeddings import Embedder, embedding_input

    embedder = Embedder(cache=cache)
    texts = (embedding_input(e.text, e.text_pair) for e in iter_examples(pool, DataConfig(pool=pool)))
    target = cache / "embeddings" / f"{embedder._key(texts)}.npy"
    with pool.open(encoding="utf-8") as fh:
        n = sum(1 for _ in fh)
    target.parent.mkdir(parents=True, exist_ok=True)
    emb = np.lib.format.open_memmap(target, mode="w+", dtype=np.float32, shape=(n, 384))
    rng = np.random.default_rng(0)
    for start in range(0, n, 100_000):
        block = rng.standard_normal((min(100_000, n - start), 384)).astype(np.float32)
        emb[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    emb.flush()


def _status(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of a process, in KiB (empty once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {
        k: int(v.split()[0])
        for k, v in (line.split(":", 1) for line in text.splitlines())
        if k in ("VmRSS", "RssAnon", "RssFile")
    }


def run(work: Path, src: Path, threads: int) -> tuple[float, dict[str, float], str]:
    """One `imfl run`: wall seconds, peak memory in GiB (``rss`` as the kernel counts it, and its two parts sampled
    every 0.2 s: ``anon``, the process's own memory, and ``file``, pages of mapped files such as the memory-mapped
    embeddings, which the kernel can drop and read again), and the round's summary line."""
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS=str(threads), IMFL_CACHE=str(work / "cache"))
    start = time.perf_counter()
    with (work / "run.log").open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "imfl", "run", str(work / "run.toml")], stdout=log, stderr=subprocess.STDOUT, env=env
        )
        peak = {"RssAnon": 0, "RssFile": 0}
        while proc.poll() is None:
            for key, value in _status(proc.pid).items():
                if key in peak:
                    peak[key] = max(peak[key], value)
            time.sleep(0.2)
    wall = time.perf_counter() - start
    output = (work / "run.log").read_text()
    if proc.returncode:
        sys.exit(f"imfl run failed ({proc.returncode}):\n{output[-3000:]}")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, the largest child so far: runs go smallest first
    last = [line for line in output.splitlines() if line.startswith("round 1:")]
    return wall, {"rss": rss / 2**20, "anon": peak["RssAnon"] / 2**20, "file": peak["RssFile"] / 2**20}, last[-1] if last else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="100000,1000000", help="pool sizes, comma-separated")
    parser.add_argument("--text-bytes", type=int, default=2000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/imfl-big-pool"))
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="append the JSON lines here")
    args = parser.parse_args()
    for rows in (int(x) for x in args.rows.split(",")):
        work = args.work / f"{rows}-{args.text_bytes}"
        work.mkdir(parents=True, exist_ok=True)
        pool = work / "pool.jsonl"
        if not pool.exists():  # the same files (and seeded cache) serve every --src
            write_pool(work / "pool.tmp", rows, args.text_bytes, seed=rows, prefix="p")
            (work / "pool.tmp").replace(pool)
            write_pool(work / "test.jsonl", 500, args.text_bytes, seed=rows + 1, prefix="t")
            seed_embeddings(pool, work / "cache")
        out = work / ("out-" + hashlib.sha256(str(args.src).encode()).hexdigest()[:8])
        shutil.rmtree(out, ignore_errors=True)  # a fresh run every time
        (work / "run.toml").write_text(
            # the paper's loop: with every label a person's it never loads the LLM (the default fidelity-aware
            # strategy would, for its self-check), so the numbers are the pool's and the student's
            f'name = "big"\noutput_dir = "{out}"\nseed = 0\nstrategy = "imfl"\n'
            '[data]\npool = "pool.jsonl"\ntest = "test.jsonl"\nlabels = ["neutral", "positive", "negative"]\n'
            "[budget]\ntotal = 100\nhuman = 100\nrounds = 1\n[student]\nepochs = 2\nmin_steps = 0\n",
            encoding="utf-8",
        )
        wall, peak, line = run(work, args.src, args.threads)
        emit(
            {
                "bench": "big_pool",
                "src": str(args.src),
                "rows": rows,
                "pool_gib": round(pool.stat().st_size / 2**30, 3),
                "wall_s": round(wall, 1),
                **{f"peak_{k}_gib": round(v, 3) for k, v in peak.items()},
                "round": line,
            },
            args.out,
        )


if __name__ == "__main__":
    main()
