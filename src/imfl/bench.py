"""Experiment grids over the loop: ``imfl bench run | list | reproduce GRID.toml``.

A grid file names *datasets* (each a run config file plus ``H``, the unit of human budget), the LLM
*annotators* tried on each, *strategies* (a budget as multiples of H, plus setting overrides) and *seeds*.
Every (dataset × annotator × strategy × seed) is one **cell**: one run of the same loop as ``imfl run``, in a
fresh process, which leaves one JSON in ``results/cells/`` (the configuration, the per-round metrics, the
labels used per source, the LLM's accuracy on its own labels, the selections, the wall time). A strategy
that spends no LLM label (human == total) is run once per dataset, with annotator ``none``.

Re-running a grid skips the cells whose JSON exists (and refuses a JSON made with a different
configuration); a cell killed half-way resumes from its run folder under ``work``. After every cell the
aggregate ``rounds.csv`` (one row per cell and round) and ``cells.csv`` (one row per cell) are rewritten.

``--quick`` applies the grid's ``[quick]`` table: one seed, a small H, a subset of datasets, annotators and
strategies, and extra overrides (e.g. a sample of the pool), so the whole path runs in minutes (CI).
"""

from __future__ import annotations

import csv
import fnmatch
import json
import os
import platform
import shutil
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from imfl.config import RunConfig, config_from_dict, read_toml, set_path, settings_difference
from imfl.errors import ConfigError, ImflError

NO_LLM = "none"  # the annotator name of cells that spend no LLM label


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StrategySpec(_Spec):
    total: float | None = Field(None, gt=0, description="Total labels, as a multiple of the dataset's H.")
    human: float = Field(ge=0, description="Human labels, as a multiple of H (the rest go to the LLM).")
    cost: float | None = Field(
        None,
        gt=0,
        description="A money budget instead of total: budget.cost = cost × H (the price of "
        "cost × H human labels at human.cost = 1); the LLM labels what is left, up to the whole pool.",
    )
    group: Literal["main", "ablation"] = "main"
    label: str = ""
    versus: str = Field("imfl", description="ablation: the strategy it changes one thing of (the report's Δ is against it).")
    set: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> StrategySpec:
        if (self.total is None) == (self.cost is None):
            raise ValueError("give either total (labels) or cost (money), as multiples of H")
        if self.total is not None and self.human > self.total:
            raise ValueError(f"human ({self.human}) is larger than total ({self.total})")
        if self.cost is not None and self.human > self.cost:
            raise ValueError(f"human ({self.human}) costs more than cost ({self.cost})")
        return self

    @property
    def uses_llm(self) -> bool:
        limit = self.total if self.total is not None else self.cost
        assert limit is not None  # _check: total or cost, exactly one
        return self.human < limit


class AnnotatorSpec(_Spec):
    label: str = ""
    set: dict[str, Any] = Field(default_factory=dict)
    strategies: list[str] | Literal["all"] = "all"


class DatasetSpec(_Spec):
    config: Path
    H: int = Field(gt=0)
    set: dict[str, Any] = Field(default_factory=dict)
    annotators: dict[str, AnnotatorSpec]


class QuickSpec(_Spec):
    seeds: list[int] = Field(default_factory=lambda: [0])
    H: dict[str, int] = Field(description="Dataset name -> H in quick mode; only these datasets run.")
    annotators: dict[str, list[str]] = Field(default_factory=dict)
    strategies: list[str] = Field(default_factory=list)
    set: dict[str, Any] = Field(default_factory=dict)


class GridSpec(_Spec):
    results: Path
    work: Path
    seeds: list[int] = Field(min_length=1)
    set: dict[str, Any] = Field(default_factory=dict)
    strategies: dict[str, StrategySpec] = Field(min_length=1)
    datasets: dict[str, DatasetSpec] = Field(min_length=1)
    quick: QuickSpec | None = None


@dataclass(frozen=True)
class Cell:
    dataset: str
    annotator: str
    strategy: str
    seed: int
    H: int
    group: str
    label: str
    annotator_label: str
    order: int  # the strategy's position in the grid (the report keeps it)
    config: RunConfig
    versus: str = "imfl"  # an ablation's reference strategy

    @property
    def id(self) -> str:
        return f"{self.dataset}/{self.annotator}/{self.strategy}/seed{self.seed}"

    @property
    def stem(self) -> str:
        return _stem(self.id)


def _stem(cell_id: str) -> str:
    """A cell's file and run-folder name: its id with / as __."""
    return cell_id.replace("/", "__")


@dataclass(frozen=True)
class Grid:
    path: Path
    results: Path
    work: Path
    cells: list[Cell]

    @property
    def cells_dir(self) -> Path:
        return self.results / "cells"

    def result_path(self, cell: Cell) -> Path:
        return self.cells_dir / f"{cell.stem}.json"

    def log_path(self, cell: Cell) -> Path:
        return self.work / f"{cell.stem}.log"


def load_grid(path: str | Path, quick: bool = False, results: Path | None = None, work: Path | None = None) -> Grid:
    """Read a grid file and expand it into cells (each a validated run configuration)."""
    path = Path(path)
    raw = read_toml(path, "grid file", "pass a TOML grid such as benchmarks/paper.toml")
    try:
        spec = GridSpec.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{path}: {where}: {err['msg'].removeprefix('Value error, ')}") from None
    base = path.parent.resolve()
    seeds, extra, keep_annotators, keep_strategies, h_of = spec.seeds, spec.set, {}, None, {}
    if quick:
        if spec.quick is None:
            raise ConfigError(f"{path}: --quick needs a [quick] table in the grid (seeds, H per dataset, set)")
        q = spec.quick
        seeds, extra, keep_annotators, h_of = q.seeds, spec.set | q.set, q.annotators, q.H
        keep_strategies = set(q.strategies) or None
        for name in [*q.H, *q.annotators]:
            if name not in spec.datasets:
                raise ConfigError(
                    f"{path}: quick names dataset {name!r}, which the grid does not have ({', '.join(spec.datasets)})"
                )
    for name in keep_strategies or ():
        if name not in spec.strategies:
            raise ConfigError(f"{path}: quick.strategies names {name!r}, which the grid does not define")
    for dname, dspec in spec.datasets.items():
        for aname, aspec in dspec.annotators.items():
            for sname in [] if aspec.strategies == "all" else aspec.strategies:
                if sname not in spec.strategies:
                    raise ConfigError(
                        f"{path}: datasets.{dname}.annotators.{aname}.strategies names {sname!r}, which the grid does not define"
                    )
    suffix = "-quick" if quick else ""
    results = (results or _under(base, spec.results.with_name(spec.results.name + suffix))).resolve()
    work = (work or _under(base, spec.work.with_name(spec.work.name + suffix))).resolve()

    cells: list[Cell] = []
    seen: set[str] = set()
    for seed in seeds:
        for dname, dspec in spec.datasets.items():
            if quick and dname not in h_of:
                continue
            H = h_of.get(dname, dspec.H)
            base_data = _read_run_config(_under(base, dspec.config), path, dname)
            for order, (sname, sspec) in enumerate(spec.strategies.items()):
                if keep_strategies is not None and sname not in keep_strategies:
                    continue
                for aname, aspec in dspec.annotators.items():
                    if dname in keep_annotators and aname not in keep_annotators[dname]:
                        continue
                    if aspec.strategies != "all" and sname not in aspec.strategies:
                        continue
                    if not sspec.uses_llm:
                        aname, aspec = NO_LLM, AnnotatorSpec(label="(none)")
                    cell_id = f"{dname}/{aname}/{sname}/seed{seed}"
                    if cell_id in seen:
                        continue
                    seen.add(cell_id)
                    amount: dict[str, float]
                    if sspec.total is not None:
                        amount = {"budget.total": round(sspec.total * H)}
                    else:
                        assert sspec.cost is not None  # StrategySpec._check: total or cost, exactly one
                        amount = {"budget.cost": sspec.cost * H}
                    settings = {
                        "name": _stem(cell_id),
                        "seed": seed,
                        "output_dir": str(work),
                        "budget.human": round(sspec.human * H),
                    } | amount
                    overrides = [extra, dspec.set, aspec.set, sspec.set, settings]
                    cells.append(
                        Cell(
                            dname,
                            aname,
                            sname,
                            seed,
                            H,
                            sspec.group,
                            sspec.label or sname,
                            aspec.label or aname,
                            order,
                            _cell_config(base_data, overrides, _under(base, dspec.config).parent, f"{path} (cell {cell_id})"),
                            sspec.versus,
                        )
                    )
    for cell in cells:
        if cell.config.human.annotator != "oracle":
            raise ConfigError(
                f"{path}: cell {cell.id} has human.annotator = {cell.config.human.annotator!r}; a grid needs the "
                "simulated expert (oracle), since nobody waits on a benchmark"
            )
    if not cells:
        raise ConfigError(f"{path}: the grid has no cells (check quick.H, quick.annotators and quick.strategies)")
    return Grid(path.resolve(), results, work, cells)


def _under(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else base / p


def _read_run_config(path: Path, grid: Path, dataset: str) -> dict:
    if not path.is_file():
        raise ConfigError(f"{grid}: datasets.{dataset}.config = {str(path)!r}: no such file; give a run config (see configs/)")
    return read_toml(path)


def _flatten(layer: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``{"llm.k": 2}`` and ``{"llm": {"k": 2}}`` both mean: set llm.k (other llm settings stay)."""
    for key, value in layer.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _cell_config(base: dict, overrides: list[dict[str, Any]], base_dir: Path, source: str) -> RunConfig:
    import copy

    from imfl.config import resolve_strategy

    data = copy.deepcopy(base)
    data.setdefault("compare_human_only", False)  # a grid has its own human-only cells, at every seed
    for layer in overrides:
        for key, value in _flatten(layer):
            set_path(data, key, value)
    cfg = config_from_dict(data, base_dir=base_dir, source=source)
    try:
        return resolve_strategy(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


# -- one cell ------------------------------------------------------------------------------------------


def comparable_config(cfg: RunConfig, root: Path) -> dict:
    """The configuration as written into a cell's JSON: no secrets, paths relative to ``root`` (so results
    compare across clones)."""
    data = cfg.model_dump(mode="json", exclude={"llm": {"api_key"}, "human": {"token"}})

    def rel(p: str | None) -> str | None:
        return p if p is None else os.path.relpath(p, root)

    data["data"]["pool"], data["data"]["test"] = rel(data["data"]["pool"]), rel(data["data"]["test"])
    data["llm"]["file"] = rel(data["llm"]["file"])
    data.pop("output_dir")
    data.pop("cache_dir")
    return data


def annotator_accuracy(cfg: RunConfig) -> float | None:
    """The real accuracy of the LLM annotator over the whole pool: a simulated LLM's setting, or the share of gold-labeled
    pool items a recorded LLM got right (no usable answer counts as wrong). None for a live LLM (its accuracy is only
    known on the labels it gave) or a pool that cannot be read."""
    from imfl.annotators.recorded import RecordedAnnotator
    from imfl.data import load_dataset

    if cfg.llm.annotator == "simulated":
        return cfg.llm.accuracy
    if cfg.llm.annotator != "recorded":
        return None
    try:
        dataset = load_dataset(cfg.data.model_copy(update={"pool_sample": 0}))
        accuracy = RecordedAnnotator(dataset.task, cfg.llm.column, file=cfg.llm.file).accuracy(dataset.pool)
    except ImflError:
        return None
    return None if accuracy is None else round(accuracy, 4)


def this_cpu() -> dict:
    """The processor's model name and core count, as a cell's ``machine`` records them."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count()}


def _machine() -> dict:
    import torch

    import imfl

    return {
        **this_cpu(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "imfl": imfl.__version__,
        "threads": torch.get_num_threads(),
    }


def run_cell(cell: Cell, grid: Grid) -> dict:
    """Run one cell (or continue it) and return its result record (also written as JSON by the caller)."""
    from imfl.loop import Run
    from imfl.progress import Lines
    from imfl.store import Store

    log = grid.log_path(cell)
    log.parent.mkdir(parents=True, exist_ok=True)
    store_file = cell.config.run_dir / "store.sqlite"
    resumed = store_file.is_file()
    started = time.time()
    with log.open("a", encoding="utf-8") as fh:

        def write(line: str) -> None:
            fh.write(f"{time.strftime('%H:%M:%S')} {line}\n")
            fh.flush()

        write(f"cell {cell.id}{' (resumed)' if resumed else ''}")
        result = Run(cell.config, Lines(write)).execute()
        write(f"done in {time.time() - started:.0f} s")
    rounds = result.metrics
    measured = [(accuracy, r["llm_labels"]) for r in rounds if (accuracy := r.get("llm_accuracy")) is not None]
    llm_n = sum(n for _, n in measured)
    llm_right = sum(accuracy * n for accuracy, n in measured)
    with Store.open(store_file) as store:
        selected = [
            {"round": r["round"], "human": store.selection(r["round"], "human"), "llm": store.selection(r["round"], "llm")}
            for r in rounds
        ]
    final = rounds[-1] if rounds else {}
    return {
        "cell": {
            "id": cell.id,
            "dataset": cell.dataset,
            "annotator": cell.annotator,
            "annotator_label": cell.annotator_label,
            "strategy": cell.strategy,
            "label": cell.label,
            "group": cell.group,
            "order": cell.order,
            "seed": cell.seed,
            "H": cell.H,
            "versus": cell.versus,
        },
        "config": comparable_config(cell.config, grid.path.parent),
        "rounds": rounds,
        "final": {
            k: final.get(k)
            for k in (
                "test_accuracy",
                "test_macro_f1",
                "test_kappa",
                "human_total",
                "llm_total",
                "human_cost_total",
                "llm_cost_total",
            )
        },
        "labels_used": result.budget_used,
        "llm_accuracy": round(llm_right / llm_n, 4) if llm_n else None,
        "annotator_accuracy": annotator_accuracy(cell.config) if cell.annotator != NO_LLM else None,
        "llm_failed": sum(r.get("llm_failed", 0) + r.get("llm_unparsed", 0) for r in rounds),
        "wall_seconds": round(time.time() - started, 1),
        "loop_seconds": round(sum(sum(r.get("seconds", {}).values()) for r in rounds), 1),
        "timings": {k: round(v, 1) for k, v in result.timings.items()},
        "resumed": resumed,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": _machine(),
        "selected": selected,
    }


def _die_with_parent() -> None:
    """Linux: a worker gets SIGTERM when the grid's process dies (even by SIGKILL), instead of running on alone.
    What the cell committed stays in its store; the next run of the grid continues it."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: Ctrl-C still reaches the whole process group
        pass


def _cell_process(cell: Cell, grid: Grid, threads: int | None) -> dict:
    """Entry point of a worker process: its output goes to the cell's log, libraries are quiet, the thread
    count is set, then the cell runs."""
    _die_with_parent()
    log = grid.log_path(cell)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as fh:  # warnings of libraries land in the log, not on the user's screen
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if threads:
        torch.set_num_threads(threads)
    try:
        return run_cell(cell, grid)
    except ImflError:
        raise
    except Exception as exc:  # a crash inside a cell is reported, the grid goes on
        with grid.log_path(cell).open("a", encoding="utf-8") as fh:
            traceback.print_exc(file=fh)
        raise ImflError(f"{type(exc).__name__}: {exc} (traceback in {grid.log_path(cell)})") from None


# -- the grid ------------------------------------------------------------------------------------------


@dataclass
class CellEvent:
    kind: Literal["skipped", "started", "done", "failed", "deferred"]
    cell: Cell
    record: dict | None = None
    error: str | None = None


def pending_cells(grid: Grid, only: list[str] | None = None, skip: list[str] | None = None) -> tuple[list[Cell], list[Cell]]:
    """(cells done, cells to run); ``only`` keeps cells whose id matches one of its glob patterns, ``skip`` drops
    those matching one of its own. A result made with a different configuration is an error: the grid changed under it."""

    def matches(cell: Cell, patterns: list[str] | None) -> bool:
        return any(fnmatch.fnmatchcase(cell.id, p) for p in patterns or ())

    chosen = [c for c in grid.cells if (not only or matches(c, only)) and not matches(c, skip)]
    if (only or skip) and not chosen:
        raise ConfigError(
            f"no cell of {grid.path.name} matches {', '.join(only or ['*'])}"
            f"{' minus ' + ', '.join(skip) if skip else ''} (ids look like {grid.cells[0].id})"
        )
    done, todo = [], []
    for cell in chosen:
        path = grid.result_path(cell)
        if not path.is_file():
            todo.append(cell)
            continue
        try:
            old = json.loads(path.read_text(encoding="utf-8"))["config"]
        except (json.JSONDecodeError, KeyError):
            raise ConfigError(f"{path}: not a cell result (damaged?); delete it to run the cell again") from None
        new = comparable_config(cell.config, grid.path.parent)
        if key := settings_difference(old, new):
            raise ConfigError(
                f"{path} was made with a different configuration ({key}); delete it to run the cell again, "
                "or restore the grid file"
            )
        done.append(cell)
    return done, todo


def cell_seconds(record: dict) -> float:
    """How long a finished cell took: its rounds over every attempt, or its last attempt's wall time (which also
    counts loading the models and embedding the pool) when that is longer."""
    return max(record.get("wall_seconds") or 0.0, record.get("loop_seconds") or 0.0)


def estimate_seconds(cell: Cell, records: list[dict], cpu: dict | None = None) -> float | None:
    """How long ``cell`` should take: the median time of the finished cells most like it. Cells that ran on this
    ``cpu`` (see :func:`this_cpu`) come before any other (another processor can be twice as fast); among those,
    the same dataset, annotator and strategy, else the same dataset and annotator. None when no cell is like it."""
    here = [r for r in records if cpu and {k: r.get("machine", {}).get(k) for k in cpu} == cpu]
    for pool in (here, records):
        for keys in (("dataset", "annotator", "strategy"), ("dataset", "annotator")):
            times = [cell_seconds(r) for r in pool if all(r["cell"][k] == getattr(cell, k) for k in keys)]
            if times:
                return float(statistics.median(times))
    return None


@dataclass
class PlannedCell:
    """A cell as ``imfl bench list`` shows it: done or not, and for a cell to run, how long it should take
    (:func:`estimate_seconds` on this processor; None when no finished cell is like it)."""

    cell: Cell
    done: bool
    seconds: float | None = None

    @property
    def budget(self) -> str:
        """The cell's budget as a person reads it: human + LLM labels, or human labels + LLM labels for the money."""
        b = self.cell.config.budget
        return f"{b.human} + {b.total - b.human}" if b.cost is None else f"{b.human} + LLM, cost {b.cost:g}"


def grid_status(grid: Grid, only: list[str] | None = None, skip: list[str] | None = None) -> list[PlannedCell]:
    """Every chosen cell of ``grid`` in grid order, done or with its time estimate."""
    done, todo = pending_cells(grid, only, skip)
    records = load_results(grid.results) if grid.cells_dir.is_dir() else []
    cpu = this_cpu()
    planned = [PlannedCell(c, True) for c in done] + [PlannedCell(c, False, estimate_seconds(c, records, cpu)) for c in todo]
    return sorted(planned, key=lambda p: grid.cells.index(p.cell))


class Eta:
    """Cells finished out of ``total``, and the seconds left at the pace so far."""

    def __init__(self, total: int):
        self.total, self.finished, self.started = total, 0, time.perf_counter()

    def tick(self) -> float:
        """One more cell finished: the seconds the rest should take."""
        self.finished += 1
        return (time.perf_counter() - self.started) / self.finished * (self.total - self.finished)


def run_grid(
    grid: Grid,
    workers: int = 1,
    only: list[str] | None = None,
    skip: list[str] | None = None,
    on_event: Callable[[CellEvent], None] = lambda e: None,
    until: float | None = None,
) -> list[CellEvent]:
    """Run every cell that has no result yet, ``workers`` at a time (each in a fresh process with
    cores/workers torch threads). Returns the events of the cells run; a failed cell does not stop the others.

    With ``until`` (a time.time() value) a cell is started only if :func:`estimate_seconds` (on this processor)
    says it ends by then (one with no estimate, while ``until`` has not passed): a free worker takes the first such
    cell in grid order, so shorter cells fill the time at the end. The others get a "deferred" event, for a later run."""
    done, todo = pending_cells(grid, only, skip)
    for cell in done:
        on_event(CellEvent("skipped", cell))
    grid.cells_dir.mkdir(parents=True, exist_ok=True)
    grid.work.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    events: list[CellEvent] = []
    records, cpu = (load_results(grid.results) if until is not None else []), this_cpu()

    def fits(cell: Cell) -> bool:
        return until is None or time.time() + (estimate_seconds(cell, records, cpu) or 0.0) <= until

    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        running: dict[Future, Cell] = {}

        def submit() -> None:
            cell = next((c for c in todo if fits(c)), None)
            if cell is not None:
                todo.remove(cell)
                running[pool.submit(_cell_process, cell, grid, threads)] = cell
                on_event(CellEvent("started", cell))

        for _ in range(workers):
            submit()
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                cell = running.pop(future)
                try:
                    record = future.result()
                except Exception as exc:  # ImflError from the cell, or a worker that died
                    event = CellEvent("failed", cell, error=str(exc) or type(exc).__name__)
                else:
                    _write_json(grid.result_path(cell), record)
                    write_aggregates(grid.results)
                    records.append(record)
                    event = CellEvent("done", cell, record)
                events.append(event)
                on_event(event)
                submit()
    for cell in todo:
        events.append(CellEvent("deferred", cell))
        on_event(events[-1])
    return events


def reproduce(
    grid: Grid,
    patterns: list[str],
    quick: bool,
    scratch: Path,
    on_result: Callable[[Cell, str | None], None] = lambda cell, diff: None,
) -> list[tuple[Cell, str | None]]:
    """Run the finished cells matching ``patterns`` again from nothing but their grid and JSON, one at a time in a
    fresh process with the thread count the JSON records, into ``scratch``; compare what they select and score.
    Returns (cell, first difference or None) per cell. ``scratch`` is emptied first."""
    done, _ = pending_cells(grid, patterns)
    if not done:
        raise ConfigError(f"no finished cell of {grid.path.name} matches {', '.join(patterns)}; `imfl bench list` shows them")
    if scratch.exists():
        shutil.rmtree(scratch)
    fresh = load_grid(grid.path, quick, results=scratch / "results", work=scratch / "work")
    by_id = {c.id: c for c in fresh.cells}
    fresh.cells_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for cell in done:
        old = json.loads(grid.result_path(cell).read_text(encoding="utf-8"))
        with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
            new = pool.submit(_cell_process, by_id[cell.id], fresh, old["machine"].get("threads")).result()
        _write_json(fresh.result_path(cell), new)
        diff = cell_difference(old, new)
        out.append((cell, diff))
        on_result(cell, diff)
    return out


REPRODUCED = ("human_total", "llm_total", "llm_failed", "test_accuracy", "test_macro_f1", "llm_accuracy")


def cell_difference(old: dict, new: dict) -> str | None:
    """The first way two results of one cell differ: the items selected in a round, or a round's labels and scores."""
    if len(old["rounds"]) != len(new["rounds"]):
        return f"{len(old['rounds'])} rounds then, {len(new['rounds'])} now"
    for a, b in zip(old["selected"], new["selected"]):
        for target in ("human", "llm"):
            if a[target] != b[target]:
                return f"round {a['round']}: the items selected for the {target} differ"
    for a, b in zip(old["rounds"], new["rounds"]):
        for key in REPRODUCED:
            if a.get(key) != b.get(key):
                return f"round {a['round']}: {key} {a.get(key)!r} then, {b.get(key)!r} now"
    return None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(_readable_json(data) + "\n", encoding="utf-8")
    tmp.replace(path)


def _readable_json(value, indent: str = "") -> str:
    """JSON indented by one space per level, except that a list holding no list or object stays on one line
    (per-class numbers would otherwise take a line each)."""
    inner = indent + " "
    if isinstance(value, dict) and value:
        items = (f"{inner}{json.dumps(k, ensure_ascii=False)}: {_readable_json(v, inner)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        return "[\n" + ",\n".join(inner + _readable_json(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value, ensure_ascii=False)


def load_results(results: Path) -> list[dict]:
    """Every cell result under ``results/cells``."""
    folder = Path(results) / "cells"
    if not folder.is_dir():
        raise ConfigError(
            f"{results}: no cells/ folder with results here; run `imfl bench run GRID.toml` first, or pass its results folder"
        )
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError:
            raise ConfigError(f"{path}: not valid JSON (damaged?); delete it and run the grid again to redo the cell") from None
    return records


ROUND_COLUMNS = (
    "round",
    "human_labels",
    "llm_labels",
    "human_total",
    "llm_total",
    "test_accuracy",
    "test_macro_f1",
    "llm_accuracy",
    "llm_failed",
    "llm_unparsed",
    "human_cost_total",
    "llm_cost_total",
    "prequential_accuracy",
    # fidelity-aware runs only (empty otherwise)
    "llm_self_n",
    "llm_self_accuracy",
    "student_est_accuracy",
    "buy_llm",
    "human_moved",
    "route_threshold",
    "llm_routed",
    "llm_filtered",
    "llm_filtered_wrong",
    "llm_small_loss",
    "llm_small_loss_wrong",
    "llm_weight_mean",
    # self-training runs only
    "pseudo_labels",
    "pseudo_accuracy",
)
CELL_COLUMNS = ("dataset", "annotator", "strategy", "group", "seed", "H")


def write_aggregates(results: Path) -> None:
    """rounds.csv (a row per cell and round) and cells.csv (a row per cell, final round) from every cell JSON.
    ``wall_seconds`` is the cell's last attempt; ``loop_seconds`` sums every round's timed steps, so a cell resumed
    after a kill still shows its whole cost."""
    records = load_results(results)
    with (Path(results) / "rounds.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow([*CELL_COLUMNS, *ROUND_COLUMNS])
        for r in records:
            for m in r["rounds"]:
                w.writerow([r["cell"][k] for k in CELL_COLUMNS] + [m.get(k) for k in ROUND_COLUMNS])
    with (Path(results) / "cells.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                *CELL_COLUMNS,
                "test_accuracy",
                "test_macro_f1",
                "human_labels",
                "llm_labels",
                "llm_accuracy",
                "llm_failed",
                "wall_seconds",
                "loop_seconds",
                "resumed",
            ]
        )
        for r in records:
            f = r["final"]
            w.writerow(
                [r["cell"][k] for k in CELL_COLUMNS]
                + [
                    f["test_accuracy"],
                    f["test_macro_f1"],
                    r["labels_used"]["human"],
                    r["labels_used"]["llm"],
                    r["llm_accuracy"],
                    r["llm_failed"],
                    r["wall_seconds"],
                    r["loop_seconds"],
                    r["resumed"],
                ]
            )
