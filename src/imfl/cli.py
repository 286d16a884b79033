"""The command line: `imfl run`, `imfl demo`. Errors of the ImflError family are printed on one line,
without a traceback, and exit with status 2."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn, TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from imfl.errors import ImflError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Interactive Multi-Fidelity Learning: few human labels, many LLM labels, one small student model.")
console = Console(stderr=True)
out = Console()


class RichReporter:
    """Progress bars for each phase of the loop (items done, items/s, time left) and a line per round."""

    def __init__(self, progress: Progress):
        self.progress = progress

    @contextlib.contextmanager
    def phase(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        task = self.progress.add_task(description, total=total)
        start = time.perf_counter()
        try:
            yield lambda n: self.progress.advance(task, n)
        finally:
            self.progress.remove_task(task)
        if total:
            spent = time.perf_counter() - start
            self.progress.console.print(f"[dim]{description}: {total} in {spent:.1f} s ({total / max(spent, 1e-9):.1f}/s)[/dim]")

    def log(self, message: str) -> None:
        self.progress.console.print(message)


class RateColumn(ProgressColumn):
    """Items per second."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f}/s" if speed else "", style="progress.data.speed")


class PlainReporter:
    """For logs (stderr is not a terminal): a line when each phase ends, no live bars."""

    @contextlib.contextmanager
    def phase(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        start = time.perf_counter()
        yield lambda n: None
        spent = time.perf_counter() - start
        rate = f" ({total / max(spent, 1e-9):.1f}/s)" if total else ""
        console.print(f"{description}: {total or ''} in {spent:.1f} s{rate}", highlight=False)

    def log(self, message: str) -> None:
        console.print(message, highlight=False)


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
    )


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]imfl: error:[/bold red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _quiet_libraries() -> None:
    """Our progress bars replace the libraries' own (weight loading, tokenizers)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _execute(cfg) -> None:
    from imfl.loop import run

    _quiet_libraries()
    started = time.perf_counter()
    if console.is_terminal:
        with _progress() as progress:
            result = run(cfg, RichReporter(progress))
    else:
        result = run(cfg, PlainReporter())
    _print_result(result, time.perf_counter() - started)


def _print_result(result, seconds: float) -> None:
    table = Table(title=f"{result.run_dir.name}: per-round results")
    for col in ("round", "+human", "+LLM", "human total", "LLM total", "LLM acc.", "test acc.", "test macro-F1"):
        table.add_column(col, justify="right")
    for m in result.metrics:
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        table.add_row(str(m["round"]), str(m["human_labels"]), str(m["llm_labels"]), str(m["human_total"]),
                      str(m["llm_total"]), fmt(m.get("llm_accuracy")), fmt(m.get("test_accuracy")), fmt(m.get("test_macro_f1")))
    out.print(table)
    if result.timings:
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in sorted(result.timings.items(), key=lambda kv: -kv[1]))
        out.print(f"time by phase: {parts}")
    out.print(f"finished in {seconds / 60:.1f} min; labels used: {result.budget_used['human']} human, {result.budget_used['llm']} LLM")
    out.print(f"outputs in {result.run_dir}/: config.toml, metrics.json, metrics.csv, labels.jsonl, adapter/, store.sqlite")


@app.command("run")
def run_cmd(
    config: Annotated[Path, typer.Argument(help="TOML configuration file (see configs/).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting: --set budget.total=500")] = None,
) -> None:
    """Run the IMFL loop described by CONFIG (or continue it, if its run folder already holds rounds)."""
    from imfl.config import load_config

    try:
        _execute(load_config(config, set_ or []))
    except ImflError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted; everything committed so far is kept: run the same command again to continue", 130)


def _find_demo_data() -> Path | None:
    here = Path(__file__).resolve()
    candidates = [Path.cwd() / "../shared/data/fpb", here.parents[2] / "../shared/data/fpb"]
    if os.environ.get("IMFL_DATA"):
        candidates.insert(0, Path(os.environ["IMFL_DATA"]) / "fpb")
    return next((c.resolve() for c in candidates if c.is_dir()), None)


@app.command()
def demo(
    data: Annotated[Optional[Path], typer.Option(help="Folder with pool.jsonl and test.jsonl (default: ../shared/data/fpb).")] = None,
    output_dir: Annotated[Path, typer.Option(help="Where the run folder is written.")] = Path("runs"),
    name: Annotated[Optional[str], typer.Option(help="Run folder name (default: demo-<data folder>).")] = None,
    budget: Annotated[int, typer.Option(help="Total labels (human + LLM).")] = 1000,
    human: Annotated[int, typer.Option(help="Of which human labels.")] = 200,
    rounds: Annotated[int, typer.Option(help="Rounds.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override any other setting, e.g. --set student.epochs=5")] = None,
) -> None:
    """IMFL on the embedded defaults: simulated experts (gold labels), the bundled SmolLM2 LLM, a MiniLM student."""
    from imfl.config import config_from_dict

    folder = data or _find_demo_data()
    if folder is None:
        _fail("no demo data found at ../shared/data/fpb; point --data at a folder holding pool.jsonl and test.jsonl "
              "(JSON lines with id, text, label)")
    if not (folder / "pool.jsonl").is_file() or not (folder / "test.jsonl").is_file():
        _fail(f"{folder}: expected pool.jsonl and test.jsonl in it; point --data at a folder holding both")
    settings = {
        "name": name or f"demo-{folder.resolve().name}",
        "seed": seed,
        "output_dir": str(output_dir),
        "data": {"pool": str(folder / "pool.jsonl"), "test": str(folder / "test.jsonl")},
        "budget": {"total": budget, "human": human, "rounds": rounds},
    }
    try:
        cfg = config_from_dict(settings, set_ or [], source="imfl demo")
        out.print(f"IMFL demo on {folder}: budget {budget} = {human} human (simulated) + {budget - human} LLM (bundled SmolLM2), {rounds} rounds")
        _execute(cfg)
    except ImflError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted; everything committed so far is kept: run the same command again to continue", 130)


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
