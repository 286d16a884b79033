"""The command line: `imfl run`, `imfl demo`, the project commands for real people (`init`, `status`,
`serve`, `annotate`, `export-batch`, `import-labels`, `export`), `imfl predict` (a trained model on a file of texts)
and the experiments (`bench`, `report`).
Errors of the ImflError family are printed on one line, without a traceback, and exit with status 2."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn

# The `imfl` command is the main program of its process, so it (and only it: the library leaves os.environ alone)
# sets these, here, before anything imports torch or tokenizers:
# oneDNN keeps a compiled kernel for every input shape it meets (1,024 by default); prompts and batches come in many
# lengths, so that cache grew the process by ~0.25 GiB per 500 LLM prompts. 16 halved the growth at the same speed.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")
# tokenizers prints a warning when a process forks after it used its thread pool; off from the start, it stays quiet.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import typer  # noqa: E402
from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from imfl.errors import ConfigError, ImflError
from imfl.progress import Lines

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Interactive Multi-Fidelity Learning: few human labels, many LLM labels, one small student model.",
)
# No console markup: texts printed here carry paths, labels, values and messages from users, in which "[...]" must
# stay as written; styles are given with Text.
console = Console(stderr=True, markup=False)
out = Console(markup=False)


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
            self.progress.console.print(
                Text(f"{description}: {total} in {spent:.1f} s ({total / max(spent, 1e-9):.1f}/s)", style="dim")
            )

    def log(self, message: str) -> None:
        self.progress.console.print(message)


class RateColumn(ProgressColumn):
    """Items per second."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f}/s" if speed else "", style="progress.data.speed")


def _plain_reporter() -> Lines:
    """For logs (stderr is not a terminal): a line when each phase ends, no live bars."""
    return Lines(lambda line: console.print(line, highlight=False))


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )


def _fail(message: str, code: int = 2) -> NoReturn:
    console.print(Text.assemble(("imfl: error:", "bold red"), " ", message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _quiet_libraries() -> None:
    """Our progress bars replace the libraries' own (weight loading; tokenizers: see the top of this module)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _execute(cfg, continue_partial: bool = False) -> None:
    from imfl.loop import run

    _quiet_libraries()
    started = time.perf_counter()
    if console.is_terminal:
        with _progress() as progress:
            result = run(cfg, RichReporter(progress), continue_partial)
    else:
        result = run(cfg, _plain_reporter(), continue_partial)
    _print_result(result, time.perf_counter() - started)


def _print_result(result, seconds: float) -> None:
    # Headers in two lines and no vertical rules: the widest table (a run that measures its LLM) fits 80 columns.
    table = Table(title=f"{result.run_dir.name}: per-round results", box=box.SIMPLE_HEAD, show_edge=False, padding=(0, 1, 0, 0))
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    columns = {  # header: value of a round's metrics
        "round": lambda m: str(m["round"]),
        "+human": lambda m: str(m["human_labels"]),
        "+LLM": lambda m: str(m["llm_labels"]),
        "human\ntotal": lambda m: str(m["human_total"]),
        "LLM\ntotal": lambda m: str(m["llm_total"]),
        # A run that measures its LLM (llm.eval_sample; strategy fidelity) shows the measurement and what it decided.
        "LLM\nmeasured": lambda m: fmt(m.get("llm_self_accuracy")),
        "student\nest.": lambda m: fmt(m.get("student_est_accuracy")),
        "buy\nLLM?": lambda m: {True: "yes", False: "no"}.get(m.get("buy_llm"), "–"),
        "LLM\nright": lambda m: fmt(m.get("llm_accuracy")),
        "test\nacc.": lambda m: fmt(m.get("test_accuracy")),
        "macro\nF1": lambda m: fmt(m.get("test_macro_f1")),
    }
    measured = any(m.get("llm_self_accuracy") is not None for m in result.metrics)
    if not measured:
        for header in ("LLM\nmeasured", "student\nest.", "buy\nLLM?"):
            del columns[header]
    if all(m.get("llm_accuracy") is None for m in result.metrics):  # no LLM label, or no gold labels to score them
        del columns["LLM\nright"]
    for header in columns:
        table.add_column(header, justify="right")
    for m in result.metrics:
        table.add_row(*(value(m) for value in columns.values()))
    out.print(table)
    if measured:
        out.print(
            "LLM measured: the LLM's accuracy on human-labeled items (its demonstrations from the other human labels); "
            "student est.: a student's out-of-fold accuracy on the same human labels. LLM labels are bought only "
            "while the LLM measures at least as accurate.",
            soft_wrap=True,
        )
    if "LLM\nright" in columns:
        out.print("LLM right: the share of the round's LLM labels that agree with the pool's gold labels.", soft_wrap=True)
    if result.metrics and result.metrics[-1].get("human_only"):
        out.print(result.metrics[-1]["human_only"]["summary"], soft_wrap=True)
    if result.timings:
        parts = ", ".join(f"{k} {v:.0f} s" for k, v in sorted(result.timings.items(), key=lambda kv: -kv[1]))
        out.print(f"time by phase: {parts}")
    used = f"labels used: {result.budget_used['human']} human, {result.budget_used['llm']} LLM"
    if result.waiting_round is not None:
        out.print(
            f"stopped after {seconds / 60:.1f} min: round {result.waiting_round} waits for {result.pending} human labels ({used})"
        )
        out.print(
            f"label them with `imfl serve {result.run_dir}` (web page), `imfl annotate {result.run_dir}` (terminal) or "
            f"`imfl export-batch` / `imfl import-labels` (files), then run the same command again"
        )
        return
    out.print(f"finished in {seconds / 60:.1f} min; {used}")
    out.print(f"outputs in {result.run_dir}/: config.toml, metrics.json, metrics.csv, labels.jsonl, adapter/, store.sqlite")


@app.command("run")
def run_cmd(
    config: Annotated[Path, typer.Argument(help="TOML configuration file (see configs/).")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting: --set budget.total=500")] = None,
    continue_partial: Annotated[
        bool,
        typer.Option(
            "--continue-partial",
            help="A round waiting for people goes on with the labels given so far; the rest of its "
            "human budget moves to the next round.",
        ),
    ] = False,
) -> None:
    """Run the IMFL loop described by CONFIG (or continue it, if its run folder already holds rounds). With
    human.annotator = "people" it stops when a round waits for human labels; run it again once they are in."""
    try:
        _execute(_project_config(config, set_), continue_partial)
    except ImflError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted; everything committed so far is kept: run the same command again to continue", 130)


DEMO_FPB_LABELS = ("neutral", "positive", "negative")


def _find_demo_data() -> Path | None:
    here = Path(__file__).resolve()
    candidates = [Path.cwd() / "../shared/data/fpb", here.parents[2] / "../shared/data/fpb"]
    if os.environ.get("IMFL_DATA"):
        candidates.insert(0, Path(os.environ["IMFL_DATA"]) / "fpb")
    return next((c.resolve() for c in candidates if c.is_dir()), None)


def demo_config(
    folder: Path,
    shared_fpb: bool,
    *,
    name: str | None = None,
    output_dir: Path = Path("runs"),
    budget: int = 1000,
    human: int = 200,
    rounds: int = 5,
    seed: int = 0,
    overrides: Sequence[str] = (),
):
    """The demo's configuration on ``folder`` (``shared_fpb``: the shared FPB folder, found without --data)."""
    from imfl.config import config_from_dict

    settings: dict[str, Any] = {
        "name": name or f"demo-{folder.resolve().name}",
        "seed": seed,
        "output_dir": str(output_dir),
        "data": {"pool": str(folder / "pool.jsonl"), "test": str(folder / "test.jsonl")},
        "budget": {"total": budget, "human": human, "rounds": rounds},
    }
    if shared_fpb:
        # The label order of configs/fpb.toml and the benchmark grid. The prompt lists the labels in this order, and
        # SmolLM2 is sensitive to it (docs/benchmarks/embedded-llm.md, "The label order in the prompt").
        settings["data"]["labels"] = list(DEMO_FPB_LABELS)
        # The grid runs each cell on one torch thread; the embeddings and the student on one thread here too make the
        # demo repeat the cell's students and decisions exactly (on the same kind of processor). The LLM keeps every
        # core: here it only measures itself, far below the student, so its last bits do not turn a decision.
        settings["student"] = {"num_threads": 1}
        settings["embeddings"] = {"num_threads": 1}
    return config_from_dict(settings, list(overrides), source="imfl demo")


@app.command()
def demo(
    data: Annotated[
        Path | None, typer.Option(help="Folder with pool.jsonl and test.jsonl (default: ../shared/data/fpb).")
    ] = None,
    output_dir: Annotated[Path, typer.Option(help="Where the run folder is written.")] = Path("runs"),
    name: Annotated[str | None, typer.Option(help="Run folder name (default: demo-<data folder>).")] = None,
    budget: Annotated[int, typer.Option(help="Total labels (human + LLM).")] = 1000,
    human: Annotated[int, typer.Option(help="Of which human labels.")] = 200,
    rounds: Annotated[int, typer.Option(help="Rounds.")] = 5,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override any other setting, e.g. --set student.epochs=5")
    ] = None,
) -> None:
    """The default method (fidelity-aware IMFL) on the embedded defaults: simulated experts (gold labels), the bundled
    SmolLM2 LLM, a MiniLM student. On the shared FPB data it is the benchmark grid's cell fpb/smollm2/fidelity."""
    folder = data or _find_demo_data()
    if folder is None:
        _fail(
            "no demo data found at ../shared/data/fpb; point --data at a folder holding pool.jsonl and test.jsonl "
            "(JSON lines with id, text, label)"
        )
    if not (folder / "pool.jsonl").is_file() or not (folder / "test.jsonl").is_file():
        _fail(f"{folder}: expected pool.jsonl and test.jsonl in it; point --data at a folder holding both")
    try:
        cfg = demo_config(
            folder,
            data is None,
            name=name,
            output_dir=output_dir,
            budget=budget,
            human=human,
            rounds=rounds,
            seed=seed,
            overrides=set_ or [],
        )
        llm = budget - human
        if cfg.strategy == "fidelity":
            out.print(
                f"imfl demo on {folder}: fidelity-aware IMFL (the default strategy), budget {budget} labels = {human} "
                f"human (simulated) + up to {llm} from the bundled SmolLM2, bought only while it measures at least as "
                f"accurate as the student; {rounds} rounds",
                soft_wrap=True,
            )
        else:
            out.print(
                f"imfl demo on {folder}: strategy {cfg.strategy}, budget {budget} = {human} human (simulated) + {llm} "
                f"LLM (bundled SmolLM2), {rounds} rounds",
                soft_wrap=True,
            )
        _execute(cfg)
    except ImflError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted; everything committed so far is kept: run the same command again to continue", 130)


# -- projects and people ---------------------------------------------------------------------------

Project = Annotated[Path, typer.Argument(help="The project's config file, or its run folder (which holds config.toml).")]


def _project_config(path: Path, overrides: list[str] | None = None):
    """The configuration of a project given by its TOML file or by its run folder."""
    from imfl.config import load_config, resolve_strategy

    if path.is_dir():
        if not (path / "config.toml").is_file():
            raise ImflError(f"{path}: no config.toml in this folder; pass a config file or a run folder made by imfl")
        path = path / "config.toml"
    return resolve_strategy(load_config(path, overrides or []))


def _project_store(project: Path):
    """The project's configuration, run folder and open store (close it after use)."""
    from imfl.store import Store

    cfg = _project_config(project)
    run_dir = cfg.run_dir
    if not (run_dir / "store.sqlite").is_file():
        raise ImflError(f"{run_dir}: no project there yet; create it with `imfl init` or `imfl run`")
    return cfg, run_dir, Store.open(run_dir / "store.sqlite")


def _labeling(project: Path, show_guesses: bool | None = None):
    from imfl.people import Labeling, read_guidelines

    cfg = _project_config(project)
    h = cfg.human
    show = h.show_guesses if show_guesses is None else show_guesses
    llm_guesses = None
    if show and cfg.llm.annotator == "recorded":  # labels the LLM already gave cost nothing to show
        from imfl.data import load_dataset

        llm_guesses = {e.id: e.extra.get(cfg.llm.column) for e in load_dataset(cfg.data).pool}
    return cfg, Labeling(
        cfg.run_dir,
        h.lease_seconds,
        h.cost,
        show,
        llm_guesses,
        descriptions=cfg.data.label_descriptions,
        guidelines=read_guidelines(h.guidelines),
        review_cost=h.review_cost,
    )


def _guarded(fn: Callable[[], None]) -> None:
    try:
        fn()
    except ImflError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted; every label given so far is kept", 130)


@app.command()
def init(
    config: Annotated[Path, typer.Argument(help="TOML configuration file.")],
    data: Annotated[Path | None, typer.Option(help="The pool file (overrides data.pool).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a setting: --set budget.total=500")] = None,
) -> None:
    """Create a project: its run folder, store (items, config) and pool embeddings. `imfl run` then starts it."""
    from imfl.loop import Run

    def go() -> None:
        overrides = list(set_ or []) + ([f"data.pool={json.dumps(str(data.resolve()))}"] if data else [])
        _quiet_libraries()
        run_dir = Run(_project_config(config, overrides), _plain_reporter()).init()
        out.print(f"project ready in {run_dir}/ (store.sqlite, config.toml); start it with `imfl run {run_dir}`")

    _guarded(go)


@app.command()
def status(project: Project) -> None:
    """Rounds and their states, budget used per source, pending human items, latest metrics."""

    from imfl.agreement import agreement
    from imfl.loop import money_spent, planned_total

    def go() -> None:
        cfg, run_dir, store = _project_store(project)
        with store:
            rounds = store.rounds()
            used = store.budget_used()
            pending = {r["round"]: len(store.pending_human(r["round"])) for r in rounds}
            counts: dict[tuple[int, str], int] = {}
            for a in store.annotations():
                counts[(a.round, a.source)] = counts.get((a.round, a.source), 0) + 1
            total, spent = planned_total(cfg, store.n_items()), money_spent(cfg, store, run_dir)
            overlap_rounds = sorted({r["round"] for r in rounds if store.overlap_items(r["round"])})
            settled = store.adjudications()
            agreed = {t: (agreement(store.human_answers(t), settled), len(store.disputes(t))) for t in overlap_rounds}
            agreed_all = agreement(store.human_answers(), settled) if overlap_rounds else None
        table = Table(title=f"{run_dir.name}: {len(rounds)} of {cfg.budget.rounds} rounds")
        for col in ("round", "state", "human (planned)", "LLM (planned)", "pending human", "test acc.", "test macro-F1"):
            table.add_column(col, justify="right")
        for r in rounds:
            m = r["metrics"] or {}
            fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
            table.add_row(
                str(r["round"]),
                r["state"],
                f"{counts.get((r['round'], 'human'), 0)} ({r['planned_human']})",
                f"{counts.get((r['round'], 'llm'), 0)} ({r['planned_llm']})",
                str(pending[r["round"]]),
                fmt(m.get("test_accuracy")),
                fmt(m.get("test_macro_f1")),
            )
        out.print(table)
        out.print(
            f"budget used: {used['human']} of {cfg.budget.human} human, {used['llm']} of "
            f"{total - cfg.budget.human} LLM (total {total})"
        )
        if cfg.budget.cost is not None:
            out.print(f"money spent: {spent:g} of budget.cost {cfg.budget.cost:g}")
        if agreed_all is not None:
            _print_agreement(agreed, agreed_all)

    _guarded(go)


def _print_agreement(per_round: dict[int, tuple[dict, int]], overall: dict) -> None:
    """``imfl status``'s agreement table (human.overlap): per round and over the run, then kappa per pair of people."""
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    table = Table(title="agreement of people on items two of them labeled (human.overlap)")
    for col in ("round", "double-labeled", "disagreements", "settled", "open", "Cohen's kappa", "Fleiss' kappa"):
        table.add_column(col, justify="right")
    rows = [(str(t), a, str(n_open)) for t, (a, n_open) in per_round.items()]
    rows.append(("all", overall, str(sum(n for _, n in per_round.values()))))
    for name, a, n_open in rows:
        table.add_row(
            name,
            str(a["items_double"]),
            str(a["disagreements"]),
            str(a["settled"]),
            n_open,
            fmt(a["cohen_kappa"]),
            fmt(a["fleiss_kappa"]),
        )
    out.print(table)
    for p in overall["pairs"]:
        out.print(
            f"{p['a']} and {p['b']}: {p['items']} items both labeled, {p['agreed']} agreed, Cohen's kappa {fmt(p['kappa'])}"
        )


@app.command()
def serve(
    project: Project,
    host: Annotated[str, typer.Option(help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8765,
    show_guesses: Annotated[
        bool | None,
        typer.Option(
            "--show-guesses/--hide-guesses", help="Offer the student's guess on the page (default: human.show_guesses)."
        ),
    ] = None,
    loop: Annotated[
        bool, typer.Option("--loop/--no-loop", help="Carry the run on by itself whenever a human batch is complete.")
    ] = True,
) -> None:
    """The annotation web page for people, with the run carried on in the background as batches complete."""

    def go() -> None:
        import uvicorn

        from imfl.loop import Run, run
        from imfl.people import People
        from imfl.server import LoopWorker, create_app, new_token

        _quiet_libraries()
        cfg = _project_config(project)
        if not (cfg.run_dir / "store.sqlite").is_file():
            console.print(f"creating the project in {Run(cfg, _plain_reporter()).init()}/")
        cfg, labeling = _labeling(project, show_guesses)
        given = cfg.human.token.get_secret_value() if cfg.human.token else os.environ.get(cfg.human.token_env)
        people = People(cfg.run_dir)
        personal = people.registered()
        if not given and not personal and not console.is_terminal:  # a new token would be printed into a log file
            raise ImflError(
                f"the output goes to a log, where the access token must not be printed: set ${cfg.human.token_env} "
                "(or human.token) to a token of your choice and start again, or register people with "
                "`imfl people add` (each gets their own token)"
            )
        token = given or new_token()  # with people registered it is refused, so a new one is never printed
        app_ = create_app(labeling, token)
        if loop:
            worker = LoopWorker(
                lambda: run(cfg, _plain_reporter()), labeling, on_event=lambda m: console.print(Text(m, style="bold"))
            )
            worker.start()
        console.print(f"annotation page: http://{host}:{port}/  (stop with Ctrl-C)")
        if personal:
            active = sum(p["removed_at"] is None for p in people.list())
            who = f"{active} registered" if active else "nobody registered now: add someone with `imfl people add`"
            console.print(f"access: each person's own token ({who}; `imfl people list {project}`); the shared token is refused")
        else:
            console.print(
                "access token (shared, for one expert; `imfl people add` gives each person their own): "
                + (f"from {'human.token' if cfg.human.token else '$' + cfg.human.token_env}" if given else token)
            )
        uvicorn.run(app_, host=host, port=port, log_level="warning")

    _guarded(go)


people_app = typer.Typer(
    no_args_is_help=True,
    help="Who may use the annotation page of `imfl serve`, each with their own "
    "token and role. While nobody is registered the page takes one shared token (one expert); from the "
    "first `add` on, only personal tokens.",
)
app.add_typer(people_app, name="people")


def _people(project: Path):
    """The people of the project at ``project`` (config file or run folder), which must exist already."""
    from imfl.people import People

    _, run_dir, store = _project_store(project)
    store.close()
    return run_dir, People(run_dir)


def _refused(fn: Callable[[], None]) -> None:
    """``_guarded``, with a refusal of the store (a name registered already, or not at all) as a one-line error too."""
    from imfl.people import Rejected

    def go() -> None:
        try:
            fn()
        except Rejected as exc:
            raise ImflError(str(exc)) from None

    _guarded(go)


@people_app.command("add")
def people_add(
    project: Project,
    name: Annotated[
        str, typer.Argument(help="The person's name, recorded with their labels (1-80 letters, digits, spaces, . @ - _).")
    ],
    role: Annotated[
        str, typer.Option(help="annotator (labels) or admin (also manages people and exports, on the page).")
    ] = "annotator",
) -> None:
    """Register a person and print their new token, on stdout and only this once (the store keeps a hash of it)."""
    from imfl.people import check_name, check_role

    def go() -> None:
        check_name(name, "NAME")
        check_role(role)
        run_dir, people = _people(project)
        first = not people.registered()
        token, again = people.add(name, role)
        console.print(
            f"added {name} {'again ' if again else ''}as {role} to {run_dir}; their token follows, shown only "
            "now: give it to them privately (it is kept only as a hash, so it cannot be shown again)",
            highlight=False,
            soft_wrap=True,
        )
        out.print(token, highlight=False, soft_wrap=True)
        if first:
            console.print(
                "from now on the annotation page takes only personal tokens: the shared token is refused",
                highlight=False,
                soft_wrap=True,
            )

    _refused(go)


@people_app.command("list")
def people_list(project: Project) -> None:
    """Everyone registered (removed people too: their labels stay), with their role and labels; never a token."""

    def go() -> None:
        run_dir, people = _people(project)
        everyone = people.list()
        if not everyone:
            out.print(
                f"nobody is registered for {run_dir}: the annotation page takes the shared token (one expert); "
                f"`imfl people add {project} NAME` gives each person their own token",
                soft_wrap=True,
            )
            return
        table = Table(title=f"{run_dir.name}: people", box=box.SIMPLE_HEAD, show_edge=False)
        for col in ("name", "role", "access", "added", "labels"):
            table.add_column(col, justify="right" if col == "labels" else "left")
        day = lambda t: time.strftime("%Y-%m-%d %H:%M", time.localtime(t))  # noqa: E731
        for p in everyone:
            access = "yes" if p["removed_at"] is None else f"removed {day(p['removed_at'])}"
            table.add_row(p["name"], p["role"], access, day(p["added_at"]), str(p["labels"]))
        out.print(table)

    _refused(go)


@people_app.command("remove")
def people_remove(
    project: Project,
    name: Annotated[str, typer.Argument(help="Who to remove.")],
) -> None:
    """End a person's access at once (their token is refused from the next request on); their labels stay."""

    def go() -> None:
        _, people = _people(project)
        kept = people.remove(name)
        out.print(f"removed {name}: their token is refused from now on; their {kept} label(s) stay", highlight=False)

    _refused(go)


@app.command()
def annotate(
    project: Project,
    name: Annotated[str, typer.Option(help="Your name, recorded with your labels.")] = "expert",
) -> None:
    """Label the waiting round's items at the terminal: a number chooses a label, u undoes, s skips, q quits."""
    from rich.panel import Panel

    from imfl.people import Rejected, check_name

    def go() -> None:
        check_name(name, "--name")
        _, labeling = _labeling(project)
        while True:
            got = labeling.next(name)
            if "item" not in got:
                why = {
                    "finished": "the run is finished",
                    "busy": "no round waits for human labels; `imfl run` carries the run on",
                    "others": "every remaining item is held by someone else right now",
                    "new": "nothing selected yet; run `imfl run`",
                }
                out.print(why[got["state"]])
                return
            item, labels = got["item"], got["labels"]
            body = Text(item["text"])
            if item.get("text_pair"):
                body = Text.assemble((item["text_pair"] + "\n\n", "dim"), item["text"])
            out.print(Panel(body, title=f"round {got['round']}: {got['done']} of {got['total']} labeled", title_align="left"))
            choices = "  ".join(f"[{i + 1}] {label}" for i, label in enumerate(labels))
            answer = console.input(f"{choices}   [u] undo  [s] skip  [q] quit > ", markup=False).strip().lower()
            try:
                if answer == "q":
                    return
                if answer == "u":
                    out.print(f"took back the label of {labeling.undo(name)['undone']}")
                elif answer == "s":
                    labeling.skip(name, item["id"])
                elif answer.isdigit() and 1 <= int(answer) <= len(labels):
                    labeling.label(name, item["id"], labels[int(answer) - 1])
                elif answer in labels:
                    labeling.label(name, item["id"], answer)
                else:
                    out.print(Text(f"{answer!r} is not a choice", style="red"))
            except Rejected as exc:
                out.print(Text(str(exc), style="red"))

    _guarded(go)


@app.command("export-batch")
def export_batch_cmd(
    project: Project,
    out_file: Annotated[Path, typer.Option("--out", help="File to write: .csv, .jsonl, or .json (Label Studio tasks).")],
    fmt: Annotated[str | None, typer.Option("--format", help="csv, jsonl or labelstudio (default: from the suffix).")] = None,
) -> None:
    """Write the waiting round's unlabeled human items to a file, for labeling elsewhere."""
    from imfl.exchange import export_batch

    def go() -> None:
        _, labeling = _labeling(project)
        n = export_batch(labeling, out_file, fmt)
        out.print(f"wrote {n} items to {out_file}; label them, then `imfl import-labels {project} FILE`")

    _guarded(go)


@app.command("import-labels")
def import_labels_cmd(
    project: Project,
    file: Annotated[Path, typer.Argument(help="CSV/JSONL with id and label columns, or a Label Studio JSON export.")],
    annotator: Annotated[str, typer.Option(help="Who gave these labels (recorded with each).")] = "import",
    fmt: Annotated[str | None, typer.Option("--format", help="csv, jsonl or labelstudio (default: from the suffix).")] = None,
) -> None:
    """Add labels made elsewhere; bad rows are reported and skipped, good rows go in."""
    from imfl.exchange import import_labels
    from imfl.people import check_name

    def go() -> None:
        check_name(annotator, "--annotator")  # here to name the option (Labeling refuses it too, at the first good row)
        _, labeling = _labeling(project)
        report = import_labels(labeling, file, annotator, fmt)
        for where, why in report.rejected:
            console.print(f"rejected {where}: {why}", highlight=False, soft_wrap=True)
        state = labeling.status()
        out.print(
            f"imported {report.accepted} labels, rejected {len(report.rejected)}; round {state['round']}: "
            f"{state['done']} of {state['total']} labeled"
        )
        if report.rejected and not report.accepted:
            raise typer.Exit(1)

    _guarded(go)


@app.command("export")
def export_cmd(
    project: Project,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to write labels and the student adapter into.")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="jsonl or csv: the labels with their provenance (and the student's "
            "adapter); hf: the trained student as a Hugging Face text classifier, loadable "
            "without imfl, in the new folder --out.",
        ),
    ] = "jsonl",
) -> None:
    """Write the labeled data with full provenance (and the trained student adapter, if any), or, with --format hf,
    the trained student as a standard model folder: transformers.pipeline("text-classification", model=OUT)."""
    import shutil

    def go() -> None:
        if fmt not in ("jsonl", "csv", "hf"):
            raise ImflError(f"--format {fmt!r} is unknown; use jsonl, csv or hf")
        if fmt == "hf":
            from imfl.export import export_hf

            _quiet_libraries()
            run_dir = _project_config(project).run_dir if not project.is_dir() else project
            with console.status("merging the adapter and writing the model"):
                written = export_hf(run_dir, out_dir)
            out.print(
                f"wrote a text classifier to {written} (model card: {written / 'README.md'}); load it with "
                f'transformers.pipeline("text-classification", model="{written}") or imfl predict {written} FILE'
            )
            return
        _, run_dir, store = _project_store(project)
        with store:
            rows = store.export_rows()
        out_dir.mkdir(parents=True, exist_ok=True)
        from imfl.io import write_csv, write_jsonl

        target = out_dir / f"labels.{fmt}"
        (write_jsonl if fmt == "jsonl" else write_csv)(target, rows)
        copied = ""
        if (run_dir / "adapter").is_dir():
            shutil.copytree(run_dir / "adapter", out_dir / "adapter", dirs_exist_ok=True)
            copied = " and adapter/"
        out.print(f"wrote {len(rows)} labels to {target}{copied}")

    _guarded(go)


@app.command("predict")
def predict_cmd(
    model: Annotated[
        Path,
        typer.Argument(
            metavar="MODEL",
            help="A run folder (config.toml, adapter/), a Student.save directory (student.json) "
            "or an exported Hugging Face classifier (config.json, model.safetensors).",
        ),
    ],
    input_file: Annotated[Path, typer.Argument(metavar="INPUT", help="Texts to label: .jsonl, .csv or .parquet.")],
    out_file: Annotated[
        Path | None,
        typer.Option("--out", help="File to write: .jsonl (default format) or .csv; default: JSON lines on stdout."),
    ] = None,
    id_field: Annotated[
        str | None, typer.Option(help="Field with each row's id (default: the model's data.id_field, else id).")
    ] = None,
    text_field: Annotated[
        str | None, typer.Option(help="Field with the text (default: the model's data.text_field, else text).")
    ] = None,
    text_pair_field: Annotated[
        str | None,
        typer.Option(
            help="Field with the second input, for a model trained with text pairs "
            "(default: the model's setting, else text_pair)."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Texts per forward pass.")] = 64,
    dtype: Annotated[
        str,
        typer.Option(
            help="float32 (default: a row's probabilities do not depend on its batch), bfloat16 "
            "(faster on CPUs with bf16 instructions; probabilities move by up to ~0.03) or auto."
        ),
    ] = "float32",
) -> None:
    """Label every row of INPUT with MODEL: its id, the predicted label and each label's probability, as JSON lines
    ({"id", "label", "probs"}) or CSV (id, label, p_<label>...). The file is read and written a chunk at a time.
    Bad rows are reported as FILE:LINE and skipped (exit status 1); an unusable model or input exits with 2."""
    from imfl.predict import predict_file

    shown = 20
    listed = [0]

    def report_bad(message: str, printer) -> None:
        listed[0] += 1
        if listed[0] <= shown:
            printer(Text(f"{message}; skipped"), highlight=False, soft_wrap=True)

    def go(printer, on_loaded=None, progress=None):
        return predict_file(
            model,
            input_file,
            out_file,
            id_field=id_field,
            text_field=text_field,
            text_pair_field=text_pair_field,
            batch_size=batch_size,
            dtype=dtype,
            on_bad=lambda m: report_bad(m, printer),
            progress=progress,
            on_loaded=on_loaded,
        )

    # A live bar only where someone watches stderr, and not over predictions printed to the same screen. The bar must
    # not redirect stdout (rich's default): that would send the predictions of `imfl predict M IN > out.jsonl` through
    # the stderr console, to the screen (wrapped and coloured), instead of into out.jsonl.
    bar = console.is_terminal and (out_file is not None or not sys.stdout.isatty())
    try:
        _quiet_libraries()
        if bar:
            columns = (
                SpinnerColumn(),
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                TextColumn("{task.completed} rows"),
                RateColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=console, redirect_stdout=False) as progress:
                task = progress.add_task("loading the model", total=None)
                summary = go(
                    progress.console.print,
                    lambda _: progress.update(task, description="predicting"),
                    lambda n: progress.advance(task, n),
                )
        else:
            summary = go(console.print)
    except ImflError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        _fail("interrupted; " + (f"{out_file} was not written" if out_file else "the rows above were predicted"), 130)
    except BrokenPipeError:  # stdout closed early (e.g. piped into head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(1) from None
    except OSError as exc:  # e.g. the input unreadable, the disk full: one line, as for the errors above
        where = f"{exc.filename}: " if exc.filename else ""
        _fail(f"{where}{exc.strerror or exc}" + (f"; {out_file} was not written" if out_file else ""))
    if summary.skipped > shown:
        console.print(f"... and {summary.skipped - shown} more bad rows skipped", highlight=False)
    where = f"; wrote {summary.out}" if summary.out else ""
    console.print(
        f"predicted {summary.predicted} rows, skipped {summary.skipped} bad rows, in {summary.seconds:.1f} s "
        f"(model loaded in {summary.load_seconds:.1f} s, then {summary.rows_per_second:.0f} rows/s){where}",
        highlight=False,
        soft_wrap=True,
    )
    if summary.skipped:
        raise typer.Exit(1)


# -- experiments -----------------------------------------------------------------------------------


def _cell_line(event, record: dict | None = None) -> Text:
    if event.kind == "failed":
        return Text.assemble(("failed", "red"), f" {event.cell.id}: {event.error}")
    assert record is not None  # a finished cell has its record
    f = record["final"]
    acc = "–" if f["test_accuracy"] is None else f"{f['test_accuracy']:.3f}"
    llm = f", LLM labels {record['llm_accuracy']:.3f} right" if record.get("llm_accuracy") is not None else ""
    return Text(
        f"done {event.cell.id}: test accuracy {acc} with {record['labels_used']['human']} human + "
        f"{record['labels_used']['llm']} LLM labels{llm}, {_minutes(record)}"
    )


def _deadline(text: str) -> float:
    """``--until``: HH:MM (its next occurrence) or an ISO date and time, as a time.time() value."""
    from datetime import datetime, timedelta

    now = datetime.now()
    try:
        if len(text) <= 5 and ":" in text:
            hour, minute = (int(part) for part in text.split(":"))
            when = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
            return (when + timedelta(days=1) if when <= now else when).timestamp()
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ConfigError(
            f"--until {text!r}: not a time; give HH:MM (e.g. 07:30) or a date and time (2027-01-31T07:30)"
        ) from None


def _minutes(record: dict) -> str:
    wall = f"{record['wall_seconds'] / 60:.1f} min"
    if not record["resumed"]:
        return wall
    return f"{wall} (resumed; {record['loop_seconds'] / 60:.1f} min of rounds in all)"


bench_app = typer.Typer(
    help="Experiment grids: dataset × annotator × strategy × seed through the loop (see benchmarks/paper.toml).",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")

GridFile = Annotated[Path, typer.Argument(metavar="GRID", help="Grid file (see benchmarks/paper.toml).")]
Quick = Annotated[bool, typer.Option("--quick", help="The grid's \\[quick] table: one seed, small budgets (minutes).")]
Only = Annotated[
    list[str] | None,
    typer.Option("--only", help="Only cells whose id matches this glob, e.g. 'fpb/*/imfl/*' (repeatable)."),
]
Skip = Annotated[list[str] | None, typer.Option("--skip", help="Leave out cells whose id matches this glob (repeatable).")]
Results = Annotated[Path | None, typer.Option(help="Results folder (default: the grid's `results`).")]
Work = Annotated[Path | None, typer.Option(help="Folder for run stores and logs (default: the grid's `work`).")]


@bench_app.command("run")
def bench_run(
    grid_file: GridFile,
    quick: Quick = False,
    workers: Annotated[
        int, typer.Option(min=1, help="Cells run at once, each in its own process with cores/workers threads.")
    ] = 1,
    only: Only = None,
    skip: Skip = None,
    results: Results = None,
    work: Work = None,
    until: Annotated[
        str | None,
        typer.Option(
            "--until",
            help="Start only cells that should end by this time (HH:MM, or 2027-01-31T07:30), judged by the "
            "times of finished cells like them; shorter cells fill the end, the rest wait for the next run.",
        ),
    ] = None,
) -> None:
    """Run the grid's cells that have no result yet, each one run of the loop; finished cells are skipped on a re-run.
    Writes one JSON per cell under RESULTS/cells/ and the aggregates RESULTS/rounds.csv and RESULTS/cells.csv."""
    from imfl.bench import Eta, load_grid, pending_cells, run_grid

    def go() -> None:
        deadline = _deadline(until) if until else None
        grid = load_grid(grid_file, quick, results, work)
        done, todo = pending_cells(grid, only, skip)
        by_time = time.strftime("%a %H:%M", time.localtime(deadline)) if deadline else ""
        by = f"; starting only cells that should end by {by_time}" if deadline else ""
        chosen = len(done) + len(todo)
        selected = f", {chosen} selected" if chosen < len(grid.cells) else ""
        out.print(
            f"{grid_file.name}{' (quick)' if quick else ''}: {len(grid.cells)} cells{selected}: {len(done)} already "
            f"done, {len(todo)} to run with {workers} worker(s){by}; results in {grid.results}, logs in {grid.work}"
        )
        if not todo:
            return
        eta = Eta(len(todo))

        def plain(event) -> None:
            if event.kind in ("done", "failed"):
                left = f" (eta {eta.tick() / 60:.0f} min)"
                line = Text.assemble(f"[{eta.finished}/{eta.total}] ", _cell_line(event, event.record), left)
                console.print(line, highlight=False)

        if console.is_terminal:
            with _progress() as progress:
                task = progress.add_task("cells", total=len(todo))

                def live(event) -> None:
                    if event.kind == "started":
                        progress.console.print(Text(f"started {event.cell.id}", style="dim"))
                    elif event.kind in ("done", "failed"):
                        progress.console.print(_cell_line(event, event.record))
                        progress.advance(task)

                events = run_grid(grid, workers, only, skip, live, deadline)
        else:
            events = run_grid(grid, workers, only, skip, plain, deadline)
        failed = [e for e in events if e.kind == "failed"]
        deferred = [e for e in events if e.kind == "deferred"]
        out.print(
            f"{len(events) - len(failed) - len(deferred)} cells done, {len(failed)} failed in "
            f"{(time.perf_counter() - eta.started) / 60:.1f} min; `imfl report {grid.results}` makes the tables and figures"
        )
        if deferred:
            out.print(
                f"{len(deferred)} cell(s) not started (first: {deferred[0].cell.id}): by the times of finished cells like "
                f"them, none would end by {by_time}; run the same command again to continue"
            )
        if failed:
            _fail(
                f"{len(failed)} cell(s) failed (first: {failed[0].cell.id}: {failed[0].error}); fix the cause and run the "
                "same command again: finished cells are kept",
                1,
            )

    _guarded(go)


@bench_app.command("list")
def bench_list(
    grid_file: GridFile, quick: Quick = False, only: Only = None, skip: Skip = None, results: Results = None, work: Work = None
) -> None:
    """The grid's cells: done, or to run with how long each should take (from finished cells like it); runs nothing."""
    from imfl.bench import grid_status, load_grid

    def go() -> None:
        grid = load_grid(grid_file, quick, results, work)
        planned = grid_status(grid, only, skip)
        todo = [p for p in planned if not p.done]
        known = [p.seconds for p in todo if p.seconds is not None]
        hours = f"about {sum(known) / 3600:.1f} h of cells" + (
            f", {len(todo) - len(known)} with no finished cell like them" if len(known) < len(todo) else ""
        )
        title = f"{grid_file.name}: {len(planned) - len(todo)} done, {len(todo)} to run" + (f" ({hours})" if todo else "")
        table = Table(title=title)
        table.add_column("cell")
        table.add_column("budget (human + LLM)", justify="right")
        table.add_column("status")
        table.add_column("minutes (estimate)", justify="right")
        for p in planned:
            minutes = "" if p.done else "–" if p.seconds is None else f"{p.seconds / 60:.0f}"
            table.add_row(p.cell.id, p.budget, "done" if p.done else "to run", minutes)
        out.print(table)

    _guarded(go)


@bench_app.command("reproduce")
def bench_reproduce(
    grid_file: GridFile,
    cells: Annotated[list[str], typer.Argument(metavar="CELL...", help="Glob(s) of finished cell ids, e.g. 'fpb/*/imfl/seed0'.")],
    quick: Quick = False,
    results: Results = None,
    work: Work = None,
) -> None:
    """Run finished cells again from scratch (under WORK/reproduce) and compare their selections and scores with their
    JSON; exit 1 when one differs."""
    from imfl.bench import load_grid, reproduce

    def go() -> None:
        grid = load_grid(grid_file, quick, results, work)

        def said(cell, diff) -> None:
            same = "reproduced exactly (same selections, labels and scores every round)"
            out.print(f"{cell.id}: " + (same if diff is None else f"DIFFERS: {diff}"), highlight=False)

        scratch = grid.work / "reproduce"
        outcome = reproduce(grid, cells, quick, scratch, said)
        differing = [cell.id for cell, diff in outcome if diff is not None]
        if differing:
            _fail(
                f"{len(differing)} of {len(outcome)} cell(s) did not reproduce (first: {differing[0]}); "
                f"their new runs are in {scratch}",
                1,
            )

    _guarded(go)


@app.command()
def report(
    results: Annotated[Path, typer.Argument(help="A grid's results folder (holding cells/).")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Where report.md, report.html and the PNGs go (default: RESULTS/report).")
    ] = None,
    human_price: Annotated[float, typer.Option(min=0, help="Price of one human label, for costs and the cost figure.")] = 1.0,
    llm_price: Annotated[float, typer.Option(min=0, help="Price of one LLM answer, for costs and the cost figure.")] = 0.01,
    mark: Annotated[
        list[str] | None,
        typer.Option(
            "--mark",
            help="NAME=ACCURACY: a real LLM to draw on the sweep figure of simulated ones, e.g. 'GPT-4 (PubMedQA)=0.705'.",
        ),
    ] = None,
) -> None:
    """Tables (Markdown, HTML) and figures (learning curves, accuracy vs cost, LLM accuracy per round, the simulated-LLM
    sweep) from a grid's results."""
    from imfl.report import MAIN_HEADER, main_table, make_report

    def go() -> None:
        marks = {}
        for item in mark or []:
            name, _, value = item.rpartition("=")
            try:
                accuracy = float(value)
            except ValueError:
                accuracy = -1.0
            if not name.strip() or not 0 <= accuracy <= 1:
                raise ConfigError(f"--mark {item!r}: write NAME=ACCURACY with an accuracy between 0 and 1, e.g. 'GPT-4=0.705'")
            marks[name.strip()] = accuracy
        rep = make_report(results, out_dir or results / "report", human_price, llm_price, marks)
        for dataset, rows in rep.datasets.items():
            table = Table(title=f"{dataset}: main table")
            for col in MAIN_HEADER:
                table.add_column(col, justify="left" if col in ("strategy", "LLM annotator") else "right")
            for cells in main_table(rows, human_price, llm_price):
                table.add_row(*cells)
            out.print(table)
        out.print(f"wrote {rep.markdown}, {rep.html} and {len(rep.figures)} figures")

    _guarded(go)


def main() -> None:  # pragma: no cover - console entry point alias
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
