"""Where the loop's time goes, against what this machine can do: one table of operation, items, wall seconds, items/s
and, where the FLOPs are counted, achieved GFLOP/s next to the machine's own matmul rate in the same dtype.

    python benchmarks/perf.py --data ../shared/data/fpb                       # every section, ~15 min on 2 cores
    python benchmarks/perf.py --data ../shared/data/fpb --only select --pool-size 1000000

Sections (``--only``, comma-separated): ``matmul`` (a large torch.matmul, fp32 and bf16: the reference rate; and the
encoder's largest product at its own size), ``embed`` (sentence embeddings of pool items as the Embedder batches them,
fp32 and bf16, against sentence-transformers' own ``encode``), ``predict`` (the student over the test set, fp32 and
bf16, with the accuracy of each), ``train`` (LoRA epochs over 1,000 pool items, fp32 and bf16, with the test
accuracy of each), ``llm`` (the local LLM annotator: one forward pass per label against batched scoring with the
label tokens side by side and the shared prefix computed once; the largest probability difference) and ``select``
(EEQ with 200 clusters on a synthetic pool of 1,000,000 384-d embeddings, and sampled against exact k-means on
20,000), ``ray`` (embedding and student predictions through ``engine = "ray"`` on a local Ray with two one-CPU
actors, against this process; the largest difference). FLOPs are counted by ``torch.utils.flop_counter`` on a
separate pass over the same inputs (the counter slows what it counts).
Each row is also printed as a JSON line (and appended to ``--out``); peak RSS is the process's so far. ``--out`` also
gets a first line with the machine and the command, and a last row per dtype with the best matmul rate of the run
(the reference of every "% of matmul").
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from _common import emit

SECTIONS = ("matmul", "embed", "predict", "train", "llm", "select", "ray")


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def timed(fn, repeat: int = 1):
    """(best wall seconds over ``repeat`` calls, the last call's result)."""
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def counted_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_rate(dtype: str, n: int, repeat: int = 10) -> tuple[float, float]:
    """(best seconds, GFLOP/s) of an n x n torch.matmul in ``dtype``."""
    import torch

    a, b = (torch.randn(n, n, dtype=getattr(torch, dtype)) for _ in range(2))
    torch.matmul(a, b)  # warm-up
    seconds, _ = timed(lambda: torch.matmul(a, b), repeat=repeat)
    return seconds, 2.0 * n**3 / seconds / 1e9


class Table:
    """Rows of the result table. ``matmul`` holds the reference GFLOP/s per dtype: the best the large matmul reached in
    this run, measured at the start and again after each operation whose FLOPs are counted (this host's rate varies
    by up to 20% from minute to minute, and a slow reference would flatter the operations)."""

    def __init__(self, out: Path | None, matmul_size: int = 4096):
        self.rows: list[dict] = []
        self.matmul: dict[str, float] = {}
        self.matmul_size = matmul_size
        self.out = out

    def add(
        self,
        operation: str,
        items: int,
        seconds: float,
        *,
        dtype: str = "",
        flops: float | None = None,
        unpadded_flops: float | None = None,
        **extra,
    ) -> dict:
        row = {
            "operation": operation,
            "dtype": dtype,
            "items": items,
            "seconds": round(seconds, 3),
            "items_per_s": round(items / seconds, 1) if seconds > 0 else None,
        }
        if flops is not None and seconds > 0:
            row["gflops"] = round(flops / seconds / 1e9, 1)
            if dtype in self.matmul:
                self.matmul[dtype] = max(self.matmul[dtype], matmul_rate(dtype, self.matmul_size, repeat=5)[1])
                row["pct_of_matmul"] = round(100 * row["gflops"] / self.matmul[dtype], 1)
                if unpadded_flops is not None:
                    row["unpadded_pct_of_matmul"] = round(100 * unpadded_flops / seconds / 1e9 / self.matmul[dtype], 1)
        row.update(extra, peak_rss_gib=round(peak_rss_gib(), 2))
        self.rows.append(row)
        emit(row, self.out)
        return row

    def show(self) -> None:
        from rich.console import Console
        from rich.table import Table as RichTable

        t = RichTable(title="imfl perf")
        for col in ("operation", "dtype", "items", "wall s", "items/s", "GFLOP/s", "% of matmul", "notes"):
            t.add_column(col, justify="left" if col in ("operation", "notes") else "right")
        core = {"operation", "dtype", "items", "seconds", "items_per_s", "gflops", "pct_of_matmul", "peak_rss_gib"}
        for r in self.rows:
            notes = ", ".join(f"{k}={v}" for k, v in r.items() if k not in core)
            t.add_row(
                r["operation"],
                r["dtype"],
                str(r["items"]),
                f"{r['seconds']:.2f}",
                str(r.get("items_per_s") or ""),
                str(r.get("gflops", "")),
                str(r.get("pct_of_matmul", "")),
                notes,
            )
        console = Console(width=200)
        console.print(t)
        if self.matmul:
            best = ", ".join(f"{dtype} {rate:.1f}" for dtype, rate in self.matmul.items())
            console.print(
                f"% of matmul: against the best GFLOP/s the {self.matmul_size}x{self.matmul_size} matmul "
                f"reached in this run ({best})"
            )


# -- sections ------------------------------------------------------------------------------------------------


def bench_matmul(table: Table, args) -> None:
    import torch

    n = args.matmul_size
    for dtype in ("float32", "bfloat16"):
        seconds, rate = matmul_rate(dtype, n)
        table.add(f"torch.matmul {n}x{n}", 1, seconds, dtype=dtype, flops=2.0 * n**3)
        table.matmul[dtype] = rate
        # the encoder's largest product on a batch of 64 FPB sentences (~30 tokens) x its 384 -> 1536 feed-forward layer
        a, b = (torch.randn(*shape, dtype=getattr(torch, dtype)) for shape in ((64 * 30, 384), (384, 1536)))
        torch.matmul(a, b)
        seconds, _ = timed(lambda: [torch.matmul(a, b) for _ in range(20)], repeat=5)
        table.add("torch.matmul 1920x384 @ 384x1536, 20 times", 20, seconds, dtype=dtype, flops=20 * 2.0 * 1920 * 384 * 1536)


def _bf16(model):
    import copy

    import torch

    return copy.deepcopy(model).to(torch.bfloat16)


def bench_embed(table: Table, args, ds) -> None:
    """The Embedder as the loop runs it (batches of texts with similar token counts), against sentence-transformers'
    own ``encode`` over the same texts (which sorts them by characters). GFLOP/s count the FLOPs of the same calls,
    padding included; ``unpadded_pct_of_matmul`` counts only those of each text on its own."""
    from imfl.embeddings import Embedder, embedding_input

    texts = [embedding_input(e.text, e.text_pair) for e in ds.pool[: args.embed_items]]
    embedder, in_bf16 = Embedder(), Embedder()
    st = embedder._load()
    in_bf16._st = _bf16(st)  # the same Embedder on a bfloat16 copy of the model
    runs = [
        (
            "embed pool, sentence-transformers encode (batches of 64 sorted by characters)",
            "float32",
            lambda x: st.encode(x, batch_size=64, normalize_embeddings=True, convert_to_numpy=True),
        ),
        ("embed pool, Embedder (batches of 64 sorted by tokens)", "float32", embedder.compute),
        ("embed pool, Embedder (batches of 64 sorted by tokens)", "bfloat16", in_bf16.compute),
    ]
    # the FLOPs without padding: each text on its own
    useful = counted_flops(lambda: [embedder.compute([t]) for t in texts])
    base = None
    for name, dtype, encode in runs:
        encode(texts[:64])  # warm-up
        seconds, emb = timed(lambda: encode(texts), repeat=2)
        emb = np.asarray(emb, dtype=np.float32)
        extra = {}
        if base is None:
            base = emb
        else:
            extra["min_cosine_vs_first"] = round(float((emb * base).sum(axis=1).min()), 6)
        table.add(
            name, len(texts), seconds, dtype=dtype, flops=counted_flops(lambda: encode(texts)), unpadded_flops=useful, **extra
        )


def _student(args, **kw):
    from imfl.student import Student

    return Student(None, seed=args.seed, num_threads=args.threads, **kw)


def _xy(ds, rows):
    labels = list(ds.task.labels)
    pairs = [e.text_pair for e in rows] if ds.task.has_pair else None
    return [e.text for e in rows], pairs, [labels.index(e.label) for e in rows]


def bench_predict(table: Table, args, ds) -> None:
    texts, pairs, y = _xy(ds, ds.pool[: args.fit_items])
    test_x, test_pairs, test_y = _xy(ds, ds.test)
    student = _student(args)
    student.fit(texts, y, len(ds.task.labels), text_pairs=pairs)
    for dtype in ("float32", "bfloat16"):
        student.predict_dtype = dtype
        predict = lambda: student.predict_proba(test_x, text_pairs=test_pairs)  # noqa: E731
        seconds, proba = timed(predict, repeat=2)
        acc = float((proba.argmax(axis=1) == np.array(test_y)).mean())
        table.add(
            f"student predict_proba (test set; trained on {len(texts)} pool items)",
            len(test_x),
            seconds,
            dtype=dtype,
            flops=counted_flops(predict),
            test_accuracy=round(acc, 4),
        )


def bench_train(table: Table, args, ds) -> None:
    texts, pairs, y = _xy(ds, ds.pool[args.fit_items : args.fit_items + args.train_items])
    test_x, test_pairs, test_y = _xy(ds, ds.test)
    for dtype in ("float32", "bfloat16"):
        student = _student(args, train_dtype=dtype, predict_dtype="float32", epochs=args.epochs)
        seconds, _ = timed(lambda s=student: s.fit(texts, y, len(ds.task.labels), text_pairs=pairs))
        acc = float((student.predict_proba(test_x, text_pairs=test_pairs).argmax(axis=1) == np.array(test_y)).mean())
        table.add(
            f"student LoRA training, {student.epochs_run_} epochs of {len(texts)} items",
            student.epochs_run_ * len(texts),
            seconds,
            dtype=dtype,
            seconds_per_epoch=round(seconds / student.epochs_run_, 1),
            test_accuracy=round(acc, 4),
        )


def bench_llm(table: Table, args, ds) -> None:
    from imfl.embeddings import Embedder, embedding_input
    from imfl.llm import local
    from imfl.llm.local import LocalBackend
    from imfl.llm.prompts import Demo, build_messages
    from imfl.llm.retrieval import nearest

    humans, items = ds.pool[: args.fit_items], ds.pool[args.fit_items : args.fit_items + args.llm_items]
    emb = Embedder().encode([embedding_input(e.text, e.text_pair) for e in humans + items])
    demos = nearest(emb[len(humans) :], emb[: len(humans)], args.k)
    prompts = [
        build_messages(
            ds.task.instruction,
            ds.task.labels,
            e.text,
            e.text_pair,
            [Demo(humans[j].id, humans[j].text, humans[j].label, humans[j].text_pair) for j in row[::-1]],
        )
        for e, row in zip(items, demos)
    ]
    labels = list(ds.task.labels)
    fp32 = LocalBackend(batch_size=args.llm_batch, dtype="float32")
    fp32.load()
    fp32.score(prompts[:2], labels)  # warm-up
    n_tokens = sum(len(fp32._render(p)) for p in prompts)
    slow_s, slow = timed(lambda: fp32.score_one_by_one(prompts, labels))
    table.add(
        f"LLM scoring, naive: one forward per label ({len(labels)} labels)",
        len(prompts),
        slow_s,
        dtype="float32",
        prompt_tokens=n_tokens,
    )
    shared = local.MIN_SHARED_PREFIX
    try:
        local.MIN_SHARED_PREFIX = 10**9  # the shared prefix computed with every prompt
        plain_s, plain = timed(lambda: fp32.score(prompts, labels))
    finally:
        local.MIN_SHARED_PREFIX = shared
    diff = float(np.abs(np.exp(plain) - np.exp(slow)).max())
    table.add(
        f"LLM scoring, labels in one pass, batches of {args.llm_batch}",
        len(prompts),
        plain_s,
        dtype="float32",
        speedup_vs_naive=round(slow_s / plain_s, 2),
        max_prob_diff=f"{diff:.1e}",
    )
    fast_s, fast = timed(lambda: fp32.score(prompts, labels))
    diff = float(np.abs(np.exp(fast) - np.exp(slow)).max())
    table.add(
        "LLM scoring, + shared prefix computed once",
        len(prompts),
        fast_s,
        dtype="float32",
        speedup_vs_naive=round(slow_s / fast_s, 2),
        max_prob_diff=f"{diff:.1e}",
        same_choice=bool((fast.argmax(axis=1) == slow.argmax(axis=1)).all()),
    )
    bf16 = LocalBackend(batch_size=args.llm_batch, dtype="bfloat16")
    bf16.score(prompts[:2], labels)
    bf_s, bf = timed(lambda: bf16.score(prompts, labels))
    gold = np.array([labels.index(e.label) for e in items])
    table.add(
        "LLM scoring, + shared prefix, bfloat16",
        len(prompts),
        bf_s,
        dtype="bfloat16",
        speedup_vs_naive=round(slow_s / bf_s, 2),
        accuracy=round(float((bf.argmax(axis=1) == gold).mean()), 4),
        accuracy_fp32=round(float((fast.argmax(axis=1) == gold).mean()), 4),
    )


def bench_ray(table: Table, args, ds) -> None:
    import tempfile

    import ray

    from imfl.config import RayConfig
    from imfl.embeddings import Embedder, embedding_input
    from imfl.engine import LocalEngine, RayEngine

    texts = [embedding_input(e.text, e.text_pair) for e in ds.pool[: args.embed_items]]
    fit_x, fit_pairs, fit_y = _xy(ds, ds.pool[: args.fit_items])
    test_x, test_pairs, _ = _xy(ds, ds.test)
    student = _student(args, predict_dtype="float32")
    student.fit(fit_x, fit_y, len(ds.task.labels), text_pairs=fit_pairs)
    seconds, _ = timed(lambda: ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False))
    table.add("ray.init (local Ray, 2 CPUs)", 1, seconds)
    results = {}
    for engine in (LocalEngine(), RayEngine(RayConfig(actors=2, cpus_per_actor=1))):
        with tempfile.TemporaryDirectory() as cache:
            seconds, emb = timed(lambda e=engine: np.array(e.embed(Embedder(cache=cache), texts)))
        extra = {"max_diff_vs_local": float(np.abs(emb - results["embed"]).max())} if results else {}
        table.add(f"embed pool, engine={engine.name}", len(texts), seconds, dtype="float32", **extra)
        seconds, proba = timed(lambda e=engine: e.predict(student, test_x, test_pairs))
        extra = {"max_diff_vs_local": float(np.abs(proba - results["predict"]).max())} if results else {}
        table.add(f"student predict_proba (test set), engine={engine.name}", len(test_x), seconds, dtype="float32", **extra)
        results = results or {"embed": emb, "predict": proba}
    ray.shutdown()


def synthetic_pool(n: int, dim: int, components: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors around ``components`` random directions (a mixture, so cluster coverage can be checked)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((components, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    truth = rng.integers(0, components, size=n)
    x = np.empty((n, dim), dtype=np.float32)
    for lo in range(0, n, 100_000):
        part = centres[truth[lo : lo + 100_000]] + 0.35 * rng.standard_normal(
            (len(truth[lo : lo + 100_000]), dim), dtype=np.float32
        ) / np.sqrt(dim)
        x[lo : lo + len(part)] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return x, truth


def _coverage(x: np.ndarray, picked: np.ndarray, truth: np.ndarray, unc: np.ndarray) -> dict:
    """How well picks cover the pool: true components hit, mean cosine of each pool item to its nearest pick (on a
    sample), and the mean uncertainty picked (exploitation)."""
    sample = np.random.default_rng(0).choice(len(x), size=min(len(x), 20_000), replace=False)
    nearest = (x[sample] @ x[picked].T).max(axis=1)
    return {
        "components_hit": int(len(set(truth[picked]))),
        "mean_cos_to_nearest_pick": round(float(nearest.mean()), 4),
        "mean_uncertainty_picked": round(float(unc[picked].mean()), 4),
    }


def bench_select(table: Table, args) -> None:
    from sklearn.cluster import MiniBatchKMeans

    from imfl.query import strategies
    from imfl.query.acquisition import eeq

    n_clusters, components = 200, 500
    for n in (20_000, args.pool_size):
        x, truth = synthetic_pool(n, 384, components, args.seed)
        unc = np.random.default_rng(args.seed + 1).random(n)
        # what the loop fits on past KMEANS_EXACT_MAX; on a pool it clusters exactly, the per-cluster minimum
        sampled = (
            max(strategies.KMEANS_SAMPLE, strategies.KMEANS_PER_CLUSTER * n_clusters)
            if n > strategies.KMEANS_EXACT_MAX
            else strategies.KMEANS_PER_CLUSTER * n_clusters
        )
        if n <= strategies.KMEANS_EXACT_MAX:  # the loop clusters exactly here: compare with the sampled path
            runs = [
                ("EEQ, exact k-means (as the loop runs it)", lambda: eeq(x, unc, n_clusters, args.seed), {}),
                (
                    "EEQ, k-means on a sample + nearest-centre assignment",
                    lambda: strategies._per_cluster(x, n_clusters, args.seed, unc, sample=sampled),
                    {"fit_rows": sampled},
                ),
            ]
        else:
            runs = [
                (
                    "EEQ, k-means on a sample + nearest-centre assignment (as the loop runs it)",
                    lambda: eeq(x, unc, n_clusters, args.seed),
                    {"fit_rows": sampled},
                )
            ]

        def minibatch():
            assign = MiniBatchKMeans(n_clusters, batch_size=4096, n_init=1, random_state=args.seed).fit_predict(x)
            order = np.lexsort((np.arange(n), -unc, assign))
            return order[np.r_[True, assign[order][1:] != assign[order][:-1]]]

        runs.append(("EEQ, MiniBatchKMeans (sklearn, batches of 4096)", minibatch, {}))
        for name, fn, extra in runs:
            seconds, picked = timed(fn)
            table.add(
                f"{name}: {n_clusters} of {n:,} x 384", n, seconds, dtype="float32", **extra, **_coverage(x, picked, truth, unc)
            )


def machine_line() -> str:
    import torch

    cpu = platform.processor()
    with contextlib.suppress(OSError):
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            cpu,
        )
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"Python {platform.python_version()}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "shared" / "data" / "fpb",
        help="folder with pool.jsonl and test.jsonl (default ../shared/data/fpb)",
    )
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {', '.join(SECTIONS)}")
    ap.add_argument("--matmul-size", type=int, default=4096)
    ap.add_argument("--embed-items", type=int, default=2000)
    ap.add_argument(
        "--fit-items",
        type=int,
        default=200,
        help="pool items the student is fitted on for predict (and the LLM's demonstrations)",
    )
    ap.add_argument("--train-items", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--llm-items", type=int, default=48)
    ap.add_argument("--llm-batch", type=int, default=8)
    ap.add_argument("--k", type=int, default=4, help="demonstrations per LLM prompt")
    ap.add_argument("--pool-size", type=int, default=1_000_000, help="synthetic pool size for select")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="append the JSON lines here as well")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        ap.error(f"--only: unknown section(s) {', '.join(unknown)}; use {', '.join(SECTIONS)}")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine_line()}", flush=True)
    if args.out:
        command = shlex.join(["python", "benchmarks/perf.py", *(sys.argv[1:] if argv is None else argv)])
        with args.out.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"machine": machine_line(), "command": command}) + "\n")
    table = Table(args.out, args.matmul_size)
    ds = None
    if set(only) & {"embed", "predict", "train", "llm", "ray"}:
        from imfl.config import config_from_dict
        from imfl.data import load_dataset

        cfg = config_from_dict(
            {"data": {"pool": str(args.data / "pool.jsonl"), "test": str(args.data / "test.jsonl")}}, source="perf"
        )
        ds = load_dataset(cfg.data)
        # The pool file is ordered (its first 200 items are 88% positive): every section takes a seeded shuffle.
        pool = list(ds.pool)
        ds = dataclasses.replace(ds, pool=[pool[i] for i in np.random.default_rng(args.seed).permutation(len(pool))])
    if "matmul" in only or set(only) & {"embed", "predict"}:
        bench_matmul(table, args)  # the reference rates the others are compared with
    for name in ("embed", "predict", "train", "llm"):
        if name in only:
            globals()[f"bench_{name}"](table, args, ds)
    if "select" in only:
        bench_select(table, args)
    if "ray" in only:
        bench_ray(table, args, ds)
    for dtype, rate in table.matmul.items():
        n = args.matmul_size
        emit({"operation": f"torch.matmul {n}x{n} (best in the run)", "dtype": dtype, "gflops": round(rate, 1)}, args.out)
    table.show()
    return 0


if __name__ == "__main__":
    sys.exit(main())
