"""Tables and figures from a grid's results: ``imfl report RESULTS_DIR``.

Per dataset: the main table shaped like the paper's (rows = strategies, columns = test accuracy and
macro-F1 as mean ± sample std over seeds, human and LLM labels used, the LLM's accuracy on its own labels,
minutes per cell), the ablation table (each ablation's difference to its reference with the same annotator),
and three PNG figures: test accuracy against the number of human labels (learning curves), against the
annotation cost (prices per label are parameters), and the LLM annotator's accuracy per round. A strategy
has one colour in all of a dataset's figures. ``report.md`` and ``report.html`` hold the same tables; the
HTML page shows the figures too.

Beyond the paper's: what fidelity-aware runs measured and did; a sweep of simulated LLMs (table of test accuracy by
simulated accuracy × human share, with the crossover where LLM labels start to pay off, and its figure); and the
ladder of LLM annotators whose real accuracy is known (recorded LLMs, simulated ones faint behind them).
"""

from __future__ import annotations

import html
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imfl.bench import NO_LLM, annotator_accuracy, load_results
from imfl.config import settings_difference


@dataclass(frozen=True)
class Row:
    """One strategy × annotator of one dataset, over its seeds."""

    dataset: str
    strategy: str
    label: str
    group: str
    order: int
    annotator: str
    annotator_label: str
    records: tuple[dict, ...]
    versus: str = "imfl"

    def final(self, key: str) -> np.ndarray:
        return np.array([r["final"][key] for r in self.records if r["final"].get(key) is not None], dtype=float)

    @property
    def seeds(self) -> list[int]:
        return sorted(r["cell"]["seed"] for r in self.records)

    def per_round(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Round-wise mean and std of ``key`` over the seeds that have every round (and its x: mean human labels)."""
        n = min(len(r["rounds"]) for r in self.records)
        values = np.array(
            [[m.get(key) if m.get(key) is not None else np.nan for m in r["rounds"][:n]] for r in self.records], dtype=float
        )
        with warnings.catch_warnings():  # a round without any value (e.g. no LLM label) stays NaN: not drawn
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(values, axis=0), _std(values), np.arange(1, n + 1)

    def cumulative(self, key: str) -> np.ndarray:
        n = min(len(r["rounds"]) for r in self.records)
        return np.mean([[m[key] for m in r["rounds"][:n]] for r in self.records], axis=0)


def _std(values: np.ndarray) -> np.ndarray:
    """Sample standard deviation over axis 0 (0 with a single seed)."""
    if values.shape[0] < 2:
        return np.zeros(values.shape[1:])
    return np.nanstd(values, axis=0, ddof=1)


def group_rows(records: list[dict]) -> dict[str, list[Row]]:
    """Rows per dataset, in the grid's strategy order (human-only rows first within a strategy)."""
    buckets: dict[tuple, list[dict]] = defaultdict(list)
    names: dict[tuple, Counter] = defaultdict(Counter)
    for r in records:
        c = r["cell"]
        buckets[(c["dataset"], c["strategy"], c["annotator"])].append(r)
        names[(c["dataset"], c["annotator"])][c["annotator_label"]] += 1
    by_dataset: dict[str, list[Row]] = defaultdict(list)
    for (dataset, strategy, annotator), recs in buckets.items():
        c = recs[0]["cell"]
        # Grids sharing a results folder may name one annotator differently: the name most of its cells carry.
        name = names[(dataset, annotator)].most_common(1)[0][0]
        by_dataset[dataset].append(
            Row(
                dataset,
                strategy,
                c["label"],
                c["group"],
                c["order"],
                annotator,
                name,
                tuple(sorted(recs, key=lambda r: r["cell"]["seed"])),
                c.get("versus", "imfl"),
            )
        )
    for rows in by_dataset.values():
        rows.sort(key=lambda row: (row.annotator != NO_LLM, row.annotator, row.order))
    return dict(by_dataset)


def _mean_std(values: np.ndarray, digits: int = 3) -> str:
    if values.size == 0:
        return "–"
    if values.size == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def _labels(row: Row, key: str) -> str:
    values = sorted({r["labels_used"][key] for r in row.records})
    return "/".join(str(v) for v in values)


def _llm_acc(row: Row) -> str:
    values = np.array([r["llm_accuracy"] for r in row.records if r.get("llm_accuracy") is not None], dtype=float)
    return _mean_std(values) if values.size else "–"


MAIN_HEADER = [
    "strategy",
    "LLM annotator",
    "human labels",
    "LLM labels",
    "test accuracy",
    "test macro-F1",
    "LLM label accuracy",
    "cost",
    "HLE (H)",
    "minutes per cell",
    "seeds",
]


def _minutes(row: Row) -> str:
    """Mean time of a cell's rounds (their timed steps, over every attempt of a resumed cell), in minutes."""
    return f"{np.mean([r['loop_seconds'] for r in row.records]) / 60:.0f}"


def main_table(rows: list[Row], human_price: float = 1.0, llm_price: float = 0.01) -> list[list[str]]:
    curve = human_curve(rows)
    return [
        [
            row.label,
            "–" if row.annotator == NO_LLM else row.annotator_label,
            _labels(row, "human"),
            _labels(row, "llm"),
            _mean_std(row.final("test_accuracy")),
            _mean_std(row.final("test_macro_f1")),
            _llm_acc(row),
            f"{cost(row, human_price, llm_price):.1f}",
            _hle_text(curve, row),
            _minutes(row),
            str(len(row.records)),
        ]
        for row in rows
        if row.group == "main"
    ]


# -- human-label equivalence and cost ---------------------------------------------------------------------


@dataclass(frozen=True)
class HLE:
    """Human-label equivalence: how many human labels, in multiples of H, the human-only learning curve needs to reach
    an accuracy. ``bound`` is "<" when the accuracy is below the curve's first point (``value`` = that point) and ">"
    when it is above every point of the curve (``value`` = its last point)."""

    value: float
    bound: str = ""

    def __str__(self) -> str:
        return f"{self.bound} {self.value:g}" if self.bound else f"{self.value:.1f}"


def human_curve(rows: list[Row]) -> list[tuple[float, float]]:
    """The human-only learning curve of a dataset: (human labels in multiples of H, mean final test accuracy over seeds)
    for every row that spent no LLM label, sorted by labels."""
    points = []
    for row in rows:
        if row.annotator == NO_LLM and all(r["labels_used"]["llm"] == 0 for r in row.records):
            H = row.records[0]["cell"]["H"]
            points.append(
                (float(np.mean([r["labels_used"]["human"] for r in row.records])) / H, float(row.final("test_accuracy").mean()))
            )
    return sorted(points)


def human_label_equivalence(curve: list[tuple[float, float]], accuracy: float) -> HLE | None:
    """Where ``accuracy`` meets the human-only ``curve`` (points (labels / H, accuracy) sorted by labels), interpolated
    linearly in log labels between the last point below it and the first point at or above it. The curve is read as
    its running maximum (a dip at more labels does not count as reaching less). None with fewer than two points."""
    if len(curve) < 2:
        return None
    (x0, best) = curve[0]
    if accuracy <= best:
        return HLE(x0, "" if accuracy == best else "<")
    for x1, a1 in curve[1:]:
        if accuracy <= a1:
            t = (accuracy - best) / (a1 - best)
            return HLE(float(np.exp(np.log(x0) + t * (np.log(x1) - np.log(x0)))))
        x0, best = x1, max(best, a1)
    return HLE(curve[-1][0], ">")


def llm_calls(record: dict) -> int:
    """LLM answers a cell paid for: its LLM labels and the fidelity-aware self-check's questions on human-labeled items."""
    return record["labels_used"]["llm"] + int(record["rounds"][-1].get("llm_self_n") or 0)


def cost(row: Row, human_price: float = 1.0, llm_price: float = 0.01) -> float:
    """Mean annotation cost of a row's cells: human labels × human_price + LLM answers × llm_price."""
    return float(np.mean([r["labels_used"]["human"] * human_price + llm_calls(r) * llm_price for r in row.records]))


def _hle(curve: list[tuple[float, float]], row: Row) -> HLE | None:
    accuracy = row.final("test_accuracy")
    return human_label_equivalence(curve, float(accuracy.mean())) if accuracy.size else None


def _hle_text(curve: list[tuple[float, float]], row: Row) -> str:
    if row.annotator == NO_LLM and row.group == "main":
        return "–"  # the curve itself
    found = _hle(curve, row)
    return str(found) if found else "–"


VALUE_HEADER = [
    "LLM annotator",
    "LLM label accuracy",
    "best with ≤ H human labels",
    "test accuracy",
    "cost",
    "HLE (H)",
    "human-only cost at equal accuracy",
]


VALUE_NOTE = (
    "HLE (human-label equivalence): how many human labels, in multiples of H, the human-only learning curve needs "
    "to reach the strategy's mean test accuracy, interpolated linearly in log labels between the curve's points "
    "(read as its running maximum); '> 5' means above every point of the curve, '< 1' below its first. Cost: human "
    "labels × the human price + LLM answers (labels and fidelity-aware self-check questions) × the LLM price."
)


def value_table(rows: list[Row], human_price: float = 1.0, llm_price: float = 0.01) -> list[list[str]]:
    """Per LLM annotator, the main strategy with at most H human labels and the best mean test accuracy: its cost and
    what the same accuracy costs with human labels alone (HLE × H human labels). Empty without a human-only curve."""
    curve = human_curve(rows)
    if len(curve) < 2:
        return []
    out = []
    for annotator in dict.fromkeys(r.annotator for r in rows if r.annotator != NO_LLM):
        candidates = [
            r
            for r in rows
            if r.annotator == annotator
            and r.group == "main"
            and r.final("test_accuracy").size
            and all(c["labels_used"]["human"] <= c["cell"]["H"] for c in r.records)
        ]
        if not candidates:
            continue
        best = max(candidates, key=lambda r: r.final("test_accuracy").mean())
        found = _hle(curve, best)
        assert found is not None  # the candidates have test accuracies
        H = best.records[0]["cell"]["H"]
        out.append(
            [
                best.annotator_label,
                _llm_acc(best),
                best.label,
                _mean_std(best.final("test_accuracy")),
                f"{cost(best, human_price, llm_price):.1f}",
                str(found),
                f"{found.bound} {found.value * H * human_price:.0f}".strip(),
            ]
        )
    return out


ABLATION_HEADER = [
    "variant",
    "LLM annotator",
    "human labels",
    "LLM labels",
    "test accuracy",
    "Δ vs reference",
    "test macro-F1",
    "LLM label accuracy",
    "seeds",
]


def ablation_table(rows: list[Row]) -> list[list[str]]:
    """Each reference strategy (IMFL, or another an ablation names with ``versus``) and its ablations with the same
    annotator; Δ is the mean difference to the reference over the seeds both have."""
    out = []
    for annotator, versus in dict.fromkeys((row.annotator, row.versus) for row in rows if row.group == "ablation"):
        ref = next((row for row in rows if row.strategy == versus and row.annotator == annotator), None)
        ablations = [r for r in rows if r.group == "ablation" and r.annotator == annotator and r.versus == versus]
        for row in ([ref] if ref else []) + ablations:
            delta = "–"
            if ref is not None and row is not ref:
                base = {r["cell"]["seed"]: r["final"]["test_accuracy"] for r in ref.records}
                diffs = np.array(
                    [r["final"]["test_accuracy"] - base[r["cell"]["seed"]] for r in row.records if r["cell"]["seed"] in base],
                    dtype=float,
                )
                delta = _mean_std(diffs) if diffs.size else "–"
                delta = delta if delta.startswith("-") or delta == "–" else "+" + delta
            out.append(
                [
                    row.label,
                    row.annotator_label,
                    _labels(row, "human"),
                    _labels(row, "llm"),
                    _mean_std(row.final("test_accuracy")),
                    delta,
                    _mean_std(row.final("test_macro_f1")),
                    _llm_acc(row),
                    str(len(row.records)),
                ]
            )
    return out


FIDELITY_SWITCHES = ("weighting", "routing", "filter", "adaptive", "small_loss")
FIDELITY_HEADER = [
    "variant",
    "LLM annotator",
    "switches",
    "LLM labels bought",
    "LLM probe accuracy",
    "student estimate",
    "real student on new human labels",
    "rounds buying LLM",
    "LLM labels routed",
    "filtered (really wrong)",
    "test accuracy",
]


def _switches(row: Row) -> list[str]:
    """The fidelity-aware switches a row's runs had on (none for plain IMFL)."""
    return [k for k in FIDELITY_SWITCHES if (row.records[0]["config"].get("fidelity") or {}).get(k)]


def fidelity_table(rows: list[Row]) -> list[list[str]]:
    """What fidelity-aware runs measured and did, mean over seeds: the final round's estimates of the LLM (probe)
    and the student (out-of-fold), the real student's accuracy on the human labels of rounds 2 on before it trained
    on them (``prequential_accuracy``, pooled over those rounds: what the stand-in estimates), how many rounds bought
    LLM labels, and the final training's routed and filtered LLM labels (with how many of the filtered were really
    wrong)."""

    def last(row: Row, key: str) -> np.ndarray:
        return np.array([r["rounds"][-1].get(key) for r in row.records if r["rounds"][-1].get(key) is not None], dtype=float)

    def mean(values: np.ndarray, digits: int) -> str:
        return f"{values.mean():.{digits}f}" if values.size else "–"

    def prequential(record: dict) -> float | None:
        scored = [(m["prequential_n"], m["prequential_accuracy"]) for m in record["rounds"] if m.get("prequential_n")]
        n = sum(k for k, _ in scored)
        return sum(k * a for k, a in scored) / n if n else None

    out = []
    for row in rows:
        switches = _switches(row)
        if not switches:
            continue
        buying = np.array([sum(bool(m.get("buy_llm")) for m in r["rounds"]) for r in row.records], dtype=float)
        filtered = mean(last(row, "llm_filtered"), 1)
        if filtered != "–":
            filtered += f" ({mean(last(row, 'llm_filtered_wrong'), 1)})"
        out.append(
            [
                row.label,
                row.annotator_label,
                ", ".join(switches),
                mean(np.array([r["labels_used"]["llm"] for r in row.records], dtype=float), 0),
                _mean_std(last(row, "llm_self_accuracy")),
                _mean_std(last(row, "student_est_accuracy")),
                _mean_std(np.array([a for a in map(prequential, row.records) if a is not None], dtype=float)),
                f"{mean(buying, 1)} of {len(row.records[0]['rounds'])}" if "adaptive" in switches else "–",
                mean(last(row, "llm_routed"), 1),
                filtered,
                _mean_std(row.final("test_accuracy")),
            ]
        )
    return out


def _markdown(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def _html_table(header: list[str], body: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


# -- figures -------------------------------------------------------------------------------------------


def _panels(rows: list[Row]) -> list[str]:
    """One panel per LLM annotator (human-only rows are drawn in every panel); one panel if there is none."""
    return list(dict.fromkeys(r.annotator for r in rows if r.annotator != NO_LLM)) or [NO_LLM]


def _figure(n: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.2), squeeze=False, sharey=True)
    return fig, axes[0]


def _styles(rows: list[Row]) -> dict[str, dict]:
    """A colour per strategy of a dataset, the same in every figure and panel (a strategy's rows can come from grids
    that order it differently): main strategies first, in grid order, then the rest; past ten, lines are dashed."""
    rank: dict[str, tuple] = {}
    for row in rows:
        key = (row.group != "main", row.order)
        rank[row.strategy] = min(rank.get(row.strategy, key), key)
    return {
        strategy: {"color": f"C{i % 10}", "linestyle": "-" if i < 10 else "--"}
        for i, strategy in enumerate(sorted(rank, key=rank.__getitem__))
    }


def _band(ax, row: Row, x, mean, std, style: dict):
    """A strategy's mean line with its ±std band."""
    ax.plot(x, mean, marker="o", label=row.label, markersize=3.5, linewidth=1.6, **style)
    if np.any(std > 0):
        ax.fill_between(x, mean - std, mean + std, color=style["color"], alpha=0.18, linewidth=0)


def _annotator_label(rows: list[Row], annotator: str) -> str:
    return next((r.annotator_label for r in rows if r.annotator == annotator), "no LLM")


def _panel_figure(rows: list[Row], panels: list[str], draw, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    """One panel per annotator; ``draw(ax, row)`` draws one row in the panel of its annotator (and the
    human-only rows in every panel, when they take part)."""
    fig, axes = _figure(len(panels))
    for ax, annotator in zip(axes, panels):
        for row in rows:
            if row.annotator in (NO_LLM, annotator):
                draw(ax, row)
        ax.set_title(_annotator_label(rows, annotator), fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


ACCURACY = "test accuracy (mean ± std over seeds)"


def learning_curves(rows: list[Row], dataset: str, path: Path) -> Path:
    """Test accuracy against the human labels spent so far; an LLM-only run (no human label) is a dashed level."""
    styles = _styles(rows)

    def draw(ax, row: Row) -> None:
        if row.group != "main":
            return
        mean, std, _ = row.per_round("test_accuracy")
        x = row.cumulative("human_total")
        if x[-1] == 0:
            ax.axhline(
                mean[-1],
                linestyle="--",
                linewidth=1.2,
                color=styles[row.strategy]["color"],
                label=f"{row.label}: {mean[-1]:.3f} with 0 human labels",
            )
        else:
            _band(ax, row, x, mean, std, styles[row.strategy])

    return _panel_figure(rows, _panels(rows), draw, "human labels used", ACCURACY, f"{dataset}: learning curves", path)


def cost_curves(rows: list[Row], dataset: str, path: Path, human_price: float, llm_price: float) -> Path:
    """Final test accuracy against annotation cost: the human-only learning curve as a line in every panel, each other
    main strategy as a point (mean ± std over seeds) with its human-label equivalence. Log x when every cost is > 0."""
    styles = _styles(rows)
    curve_rows = sorted(
        (r for r in rows if r.annotator == NO_LLM and r.group == "main"), key=lambda r: cost(r, human_price, llm_price)
    )
    curve = human_curve(rows)
    log = all(cost(r, human_price, llm_price) > 0 for r in rows if r.group == "main")

    def draw(ax, row: Row) -> None:
        if log:
            ax.set_xscale("log")
        if curve_rows and row is curve_rows[0]:
            xs = [cost(r, human_price, llm_price) for r in curve_rows]
            ax.plot(
                xs,
                [r.final("test_accuracy").mean() for r in curve_rows],
                color="0.3",
                marker="s",
                markersize=4,
                linewidth=1.6,
                label="human only: " + ", ".join(r.label for r in curve_rows),
            )
        accuracy = row.final("test_accuracy")
        if row.group != "main" or row.annotator == NO_LLM or not accuracy.size:
            return
        found, x, std = _hle(curve, row), cost(row, human_price, llm_price), _std(accuracy[:, None])[0]
        color = styles[row.strategy]["color"]
        ax.plot(
            [x],
            [accuracy.mean()],
            marker="o",
            linestyle="none",
            color=color,
            label=row.label + (f" (HLE {found})" if found else ""),
        )
        if std > 0:
            ax.vlines(x, accuracy.mean() - std, accuracy.mean() + std, color=color, linewidth=1.2)

    return _panel_figure(
        rows,
        _panels(rows),
        draw,
        f"annotation cost (human {human_price:g}, LLM {llm_price:g} per answer)",
        ACCURACY,
        f"{dataset}: accuracy against annotation cost",
        path,
    )


def _changes_the_prompt(row: Row, rows: list[Row]) -> bool:
    """An ablation whose LLM settings (e.g. its demonstrations) differ from its reference's with the same annotator
    (a setting added to imfl between the two results is no difference while at its default)."""
    ref = _cell(rows, row.versus, row.annotator)
    if ref is None:
        return False
    a, b = ref.records[0]["config"]["llm"], row.records[0]["config"]["llm"]
    return settings_difference(a, b, "llm.") is not None and settings_difference(b, a, "llm.") is not None


def llm_accuracy_curves(rows: list[Row], dataset: str, path: Path) -> Path | None:
    """The LLM's accuracy on the labels it gave in each round: the main strategies that used it, and the ablations
    that change what it is asked (its demonstrations). Ablations of the loop around it would only crowd the panel."""
    panels = [a for a in _panels(rows) if a != NO_LLM]
    if not panels:
        return None
    styles = _styles(rows)

    def draw(ax, row: Row) -> None:
        if row.annotator == NO_LLM or (row.group != "main" and not _changes_the_prompt(row, rows)):
            return
        mean, std, rounds = row.per_round("llm_accuracy")
        if not np.all(np.isnan(mean)):
            _band(ax, row, rounds, mean, std, styles[row.strategy])

    def draw_rounds(ax, row: Row) -> None:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        draw(ax, row)

    return _panel_figure(
        rows,
        panels,
        draw_rounds,
        "round",
        "LLM label accuracy (vs gold)",
        f"{dataset}: the LLM annotator's accuracy per round",
        path,
    )


# -- the fidelity sweep (simulated LLMs) -----------------------------------------------------------------


def _simulated_accuracy(row: Row) -> float | None:
    llm = row.records[0]["config"]["llm"]
    return llm.get("accuracy") if llm.get("annotator") == "simulated" else None


def _human_labels(row: Row) -> int:
    return int(row.records[0]["config"]["budget"]["human"])


@dataclass
class SweepLine:
    """IMFL (plain, or fidelity-aware) with one human share over simulated LLMs of several accuracies, and human-only
    with the same human labels."""

    name: str  # "IMFL", "fidelity-aware IMFL" or "LLM only"
    share: float
    human: int
    accuracy: np.ndarray  # the simulated LLM's accuracy (x)
    mean: np.ndarray
    std: np.ndarray
    seeds: list[int]
    reference: Row | None  # human-only with as many human labels
    whole: Row | None  # human-only with the whole budget as human labels

    @property
    def crossover(self) -> float | None:
        """See :func:`crossover`; None without a human-only reference."""
        if self.reference is None:
            return None
        return crossover(self.accuracy, self.mean - self.reference.final("test_accuracy").mean())


def crossover(accuracy: np.ndarray, gap: np.ndarray) -> float:
    """The LLM accuracy from which IMFL stays at or above human-only: ``gap`` is IMFL's test accuracy minus human-only's
    at each swept ``accuracy`` (ascending). Linear between the last swept point where IMFL is behind and the next one,
    so a noisy win below a later loss does not count; -inf if IMFL is never behind, +inf if it is behind at the top."""
    behind = np.flatnonzero(gap < 0)
    if not behind.size:
        return float("-inf")
    i = int(behind[-1])
    if i == len(gap) - 1:
        return float("inf")
    a0, a1, g0, g1 = accuracy[i], accuracy[i + 1], gap[i], gap[i + 1]
    return float(a0 + (a1 - a0) * (-g0) / (g1 - g0))


def sweep_lines(rows: list[Row]) -> list[SweepLine]:
    """The sweep in a dataset's rows: per human share, the runs with a simulated LLM, sorted by its accuracy."""
    references = {_human_labels(r): r for r in rows if r.annotator == NO_LLM}
    by_share: dict[tuple[str, float, int], list[Row]] = defaultdict(list)
    for row in rows:
        if _simulated_accuracy(row) is not None and row.group == "main":
            budget = row.records[0]["config"]["budget"]
            name = "LLM only" if budget["human"] == 0 else "fidelity-aware IMFL" if _switches(row) else "IMFL"
            by_share[(name, budget["human"] / budget["total"], budget["human"])].append(row)
    out = []
    for (name, share, human), group in sorted(by_share.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        # only rows with a simulated accuracy are grouped here (the key is never None)
        group.sort(key=_simulated_accuracy)  # type: ignore[arg-type]
        finals = [row.final("test_accuracy") for row in group]
        total = int(group[0].records[0]["config"]["budget"]["total"])
        out.append(
            SweepLine(
                name,
                share,
                human,
                np.array([_simulated_accuracy(r) for r in group]),
                np.array([f.mean() for f in finals]),
                np.array([f.std(ddof=1) if f.size > 1 else 0.0 for f in finals]),
                sorted({s for r in group for s in r.seeds}),
                references.get(human),
                references.get(total),
            )
        )
    return out


def _crossover_text(x: float | None) -> str:
    if x is None:
        return "– (no human-only run with as many human labels)"
    if x == float("-inf"):
        return "below the swept range (wins everywhere)"
    if x == float("inf"):
        return "above the swept range (never wins)"
    return f"{x:.2f}"


SWEEP_HEADER = ["simulated LLM accuracy"]


def sweep_table(lines: list[SweepLine]) -> tuple[list[str], list[list[str]]]:
    """Rows = simulated accuracy; a column per human share: IMFL's test accuracy and its Δ to human-only."""
    header = SWEEP_HEADER + [f"{line.name}, {line.share:.0%} human ({line.human}) — Δ vs human-only" for line in lines]
    accuracies = sorted({float(a) for line in lines for a in line.accuracy})
    body = []
    for acc in accuracies:
        cells = [f"{acc:.2f}"]
        for line in lines:
            hit = np.flatnonzero(np.isclose(line.accuracy, acc))
            if not hit.size:
                cells.append("–")
                continue
            i = int(hit[0])
            text = f"{line.mean[i]:.3f} ± {line.std[i]:.3f}"
            if line.reference is not None:
                text += f" ({line.mean[i] - line.reference.final('test_accuracy').mean():+.3f})"
            cells.append(text)
        body.append(cells)
    for title, refs in (
        ("human-only, same human labels", [line.reference for line in lines]),
        ("human-only, the whole budget as human labels", [line.whole for line in lines]),
    ):
        body.append([title] + [_mean_std(ref.final("test_accuracy")) if ref else "–" for ref in refs])
    body.append(["crossover: LLM labels pay off from"] + [_crossover_text(line.crossover) for line in lines])
    return header, body


def sweep_figure(lines: list[SweepLine], dataset: str, path: Path, marks: dict[str, float]) -> Path:
    """Test accuracy against the simulated LLM's accuracy, a line per human share (shaded std), human-only with the same
    human labels as a dashed level in the same colour, crossovers as dots and the ``marks`` (real LLMs) as verticals."""
    fig, (ax,) = _figure(1)
    fig.set_size_inches(7.5, 5.0)
    for k, line in enumerate(lines):
        color = f"C{k}"
        ax.plot(
            line.accuracy,
            line.mean,
            "-o",
            color=color,
            markersize=3.5,
            label=f"{line.name}, {line.share:.0%} human ({line.human})",
        )
        if np.any(line.std > 0):
            ax.fill_between(line.accuracy, line.mean - line.std, line.mean + line.std, color=color, alpha=0.15, linewidth=0)
        if line.reference is not None:
            level = line.reference.final("test_accuracy").mean()
            ax.axhline(level, color=color, linestyle="--", linewidth=1.0, label=f"human only, {line.human} labels: {level:.3f}")
            x = line.crossover
            if x is not None and np.isfinite(x):
                ax.plot([x], [level], "D", color=color, markersize=6)
    for whole in {id(line.whole): line.whole for line in lines if line.whole is not None}.values():
        level = whole.final("test_accuracy").mean()
        ax.axhline(
            level,
            color="0.2",
            linestyle=":",
            linewidth=1.2,
            label=f"human only, whole budget ({_human_labels(whole)}): {level:.3f}",
        )
    for k, (name, acc) in enumerate(marks.items()):
        ax.axvline(acc, color="0.35", linestyle=":", linewidth=1.2)
        ax.text(acc, 0.02 + 0.07 * (k % 4), f" {name} {acc:.0%}", transform=ax.get_xaxis_transform(), fontsize=7.5, color="0.25")
    return _save_single(
        fig,
        ax,
        path,
        "simulated LLM label accuracy",
        f"{dataset}: when do LLM labels pay off? (diamond: crossover)",
        legend={"fontsize": 7.5, "loc": "upper left"},
    )


# -- the ladder of real annotators (recorded LLMs), with simulated ones behind -----------------------------


def _annotator_accuracy(record: dict, results: Path) -> float | None:
    """The cell's ``annotator_accuracy``; for cells written before it existed, worked out again from the pool named in
    its config (relative to the grid's folder, looked for from ``results`` upwards)."""
    if "annotator_accuracy" in record:
        return record["annotator_accuracy"]
    from imfl.config import config_from_dict

    pool = record["config"]["data"]["pool"]
    results = Path(results).resolve()
    base = next((b for b in (results, *results.parents) if (b / pool).is_file()), None)
    return None if base is None else annotator_accuracy(config_from_dict(record["config"], base_dir=base))


@dataclass
class Rung:
    """One LLM annotator of a ladder: its real accuracy, and whether it is a simulated one."""

    annotator: str
    label: str
    accuracy: float
    simulated: bool


def ladder_rungs(rows: list[Row], results: Path) -> list[Rung]:
    """A dataset's annotators with a known accuracy, most accurate first; empty unless at least one is a real
    (recorded) LLM and there are two or more (a sweep of simulated LLMs alone is the sweep figure's business)."""
    rungs = {}
    for row in rows:
        if row.annotator != NO_LLM and row.annotator not in rungs:
            acc = _annotator_accuracy(row.records[0], results)
            if acc is not None:
                rungs[row.annotator] = Rung(row.annotator, row.annotator_label, float(acc), _simulated_accuracy(row) is not None)
    out = sorted(rungs.values(), key=lambda r: (-r.accuracy, r.annotator))
    return out if len(out) >= 2 and not all(r.simulated for r in out) else []


def _ladder_strategies(rows: list[Row], rungs: list[Rung]) -> list[Row]:
    """One row per LLM-using main strategy (the first annotator's), in grid order: the ladder's columns."""
    names = {r.annotator for r in rungs}
    first: dict[str, Row] = {}
    for row in sorted(rows, key=lambda r: r.order):
        if row.group == "main" and row.annotator in names:
            first.setdefault(row.strategy, row)
    return list(first.values())


def _cell(rows: list[Row], strategy: str, annotator: str) -> Row | None:
    return next((r for r in rows if r.strategy == strategy and r.annotator == annotator), None)


def _rounds_text(rounds: list[int]) -> str:
    """``[2, 3, 4, 6]`` → ``"2-4, 6"``; ``"none"`` when empty."""
    runs: list[list[int]] = []
    for r in sorted(rounds):
        if runs and r == runs[-1][-1] + 1:
            runs[-1].append(r)
        else:
            runs.append([r])
    return ", ".join(f"{g[0]}-{g[-1]}" if len(g) > 1 else str(g[0]) for g in runs) or "none"


def ladder_table(rows: list[Row], rungs: list[Rung]) -> tuple[list[str], list[list[str]], list[str]]:
    """Rows = annotators by accuracy; a column per LLM-using strategy (test accuracy), and what fidelity-aware runs bought;
    plus one line per human-only reference saying which real annotators each strategy beats it with."""
    strategies = _ladder_strategies(rows, rungs)
    adaptive = [s for s in strategies if "adaptive" in _switches(s)]
    header = ["LLM annotator", "its accuracy (pool)"] + [s.label for s in strategies]
    header += [f"{s.label}: LLM labels bought, moved to humans (rounds with LLM labels, per seed)" for s in adaptive]
    body = []
    for rung in rungs:
        cells = [rung.label, f"{rung.accuracy:.3f}"]
        cells += [
            _mean_std(row.final("test_accuracy")) if (row := _cell(rows, s.strategy, rung.annotator)) else "–" for s in strategies
        ]
        for s in adaptive:
            row = _cell(rows, s.strategy, rung.annotator)
            if row is None:
                cells.append("–")
                continue
            bought = np.mean([r["labels_used"]["llm"] for r in row.records])
            moved = np.mean([sum(m.get("human_moved") or 0 for m in r["rounds"]) for r in row.records])
            when = " · ".join(_rounds_text([m["round"] for m in r["rounds"] if m.get("llm_labels")]) for r in row.records)
            cells.append(
                f"{bought:.0f} of {row.records[0]['config']['budget']['total'] - row.records[0]['config']['budget']['human']}"
                f", +{moved:.0f} (rounds: {when})"
            )
        body.append(cells)
    notes = []
    for ref in (r for r in rows if r.annotator == NO_LLM and r.group == "main"):
        level = ref.final("test_accuracy").mean()
        wins = []
        for s in strategies:
            beaten = [
                rung.label
                for rung in rungs
                if not rung.simulated
                and (row := _cell(rows, s.strategy, rung.annotator))
                and row.final("test_accuracy").mean() >= level
            ]
            wins.append(f"{s.label} with {', '.join(beaten) if beaten else 'none'}")
        notes.append(f"{ref.label} ({_mean_std(ref.final('test_accuracy'))}) is matched or beaten by: " + "; ".join(wins) + ".")
    return header, body, notes


def ladder_figure(rows: list[Row], rungs: list[Rung], dataset: str, path: Path) -> Path:
    """Test accuracy (y) against the LLM annotator's real accuracy (x): per LLM-using strategy, real (recorded) LLMs as
    bold points with std bars and simulated LLMs as a faint line behind; human-only references as dashed levels."""
    fig, (ax,) = _figure(1)
    fig.set_size_inches(8.0, 6.2)  # the legend goes below the axes, where it hides no point
    strategies = _ladder_strategies(rows, rungs)
    styles = _styles(rows)
    # Real LLMs of about the same accuracy share an x: each strategy's points are moved a little sideways so that
    # their error bars stay apart; the names are written once per x, above the plot, with a faint vertical line.
    accuracies = [rung.accuracy for rung in rungs]
    dodge = 0.012 * max(max(accuracies) - min(accuracies), 0.1)
    for i, s in enumerate(strategies):
        color = styles[s.strategy]["color"]
        shift = (i - (len(strategies) - 1) / 2) * dodge
        for simulated in (True, False):
            pts = [
                (rung, row) for rung in rungs if rung.simulated == simulated and (row := _cell(rows, s.strategy, rung.annotator))
            ]
            if not pts:
                continue
            pts.sort(key=lambda p: p[0].accuracy)
            x = np.array([rung.accuracy for rung, _ in pts])
            finals = [row.final("test_accuracy") for _, row in pts]
            mean = np.array([f.mean() for f in finals])
            std = np.array([f.std(ddof=1) if f.size > 1 else 0.0 for f in finals])
            if simulated:
                ax.plot(x, mean, "-o", color=color, alpha=0.35, linewidth=1.2, markersize=3, label=f"{s.label}, simulated LLMs")
                ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.08, linewidth=0)
            else:
                ax.errorbar(
                    x + shift, mean, yerr=std, fmt="o", color=color, markersize=5, capsize=3, label=f"{s.label}, real LLMs"
                )
    names: dict[float, list[str]] = {}
    for rung in rungs:
        if not rung.simulated:
            names.setdefault(round(rung.accuracy, 3), []).append(rung.annotator)
    for acc in names:
        ax.axvline(acc, color="0.8", linewidth=0.8, zorder=0)
    if max(accuracies) - min(accuracies) < 0.1:  # one rung, or rungs close together: show them on a readable scale
        middle = (max(accuracies) + min(accuracies)) / 2
        ax.set_xlim(middle - 0.06, middle + 0.06)
    top = ax.secondary_xaxis("top")
    # Slanted: rungs a point or two apart (Mistral-7B and Llama-3-8B on Banking77) would print over each other.
    top.set_xticks(list(names), labels=["\n".join(at) for at in names.values()], fontsize=7, rotation=30, ha="left")
    for ref in (r for r in rows if r.annotator == NO_LLM and r.group == "main"):
        level = ref.final("test_accuracy").mean()
        ax.axhline(level, color=styles[ref.strategy]["color"], linestyle="--", linewidth=1.0, label=f"{ref.label}: {level:.3f}")
    return _save_single(
        fig,
        ax,
        path,
        "LLM annotator's real accuracy on the pool",
        f"{dataset}: real annotators (points) against simulated ones (faint lines)",
        legend={"fontsize": 7, "loc": "upper center", "bbox_to_anchor": (0.5, -0.13)},
    )


def _save_single(fig, ax, path: Path, xlabel: str, title: str, legend: dict) -> Path:
    """Label, grid, legend (two columns) and title of a one-panel figure with test accuracy as y, then save it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ACCURACY)
    ax.grid(alpha=0.3)
    ax.legend(ncol=2, **legend)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- the report ----------------------------------------------------------------------------------------


@dataclass
class Report:
    markdown: Path
    html: Path
    figures: list[Path]
    datasets: dict[str, list[Row]]


def make_report(
    results: Path, out: Path, human_price: float = 1.0, llm_price: float = 0.01, marks: dict[str, float] | None = None
) -> Report:
    """Write report.md, report.html and the PNG figures for every dataset in ``results`` into ``out``. ``marks``
    (name → accuracy) are real LLMs drawn on the sweep figures of simulated ones."""
    results, out = Path(results), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    datasets = group_rows(load_results(results))
    md = [
        f"# Benchmark report: {results}",
        "",
        "Mean ± sample standard deviation over seeds of the final round's test scores. LLM label accuracy: the "
        "LLM's labels against the pool's gold labels, over every label it gave in the run. Minutes per cell: the "
        "mean time of a cell's rounds (annotation, training, evaluation, selection; a resumed cell's rounds from "
        "every attempt), as measured on the machine that ran it, with whatever else it was doing.",
        "",
    ]
    page = [f"<h1>Benchmark report: {html.escape(str(results))}</h1>"]
    figures: list[Path] = []
    for dataset, rows in datasets.items():
        H = rows[0].records[0]["cell"]["H"]
        main = main_table(rows, human_price, llm_price)
        md += [f"## {dataset} (H = {H})", "", _markdown(MAIN_HEADER, main), ""]
        page += [f"<h2>{html.escape(dataset)} (H = {H})</h2>", _html_table(MAIN_HEADER, main)]
        value = value_table(rows, human_price, llm_price)
        if value:
            md += [f"### {dataset}: what the LLM labels are worth", "", VALUE_NOTE, "", _markdown(VALUE_HEADER, value), ""]
            page += [
                "<h3>What the LLM labels are worth</h3>",
                f"<p>{html.escape(VALUE_NOTE)}</p>",
                _html_table(VALUE_HEADER, value),
            ]
        ablations = ablation_table(rows)
        if ablations:
            md += [
                f"### {dataset}: ablations",
                "",
                "Each block starts with its reference (Δ –); every other row of the block changes one thing of it.",
                "",
                _markdown(ABLATION_HEADER, ablations),
                "",
            ]
            page += ["<h3>Ablations</h3>", _html_table(ABLATION_HEADER, ablations)]
        measured = fidelity_table(rows)
        if measured:
            md += [f"### {dataset}: what fidelity-aware runs measured and did", "", _markdown(FIDELITY_HEADER, measured), ""]
            page += ["<h3>What fidelity-aware runs measured and did</h3>", _html_table(FIDELITY_HEADER, measured)]
        lines = sweep_lines(rows)
        if lines:
            header, body = sweep_table(lines)
            md += [f"### {dataset}: simulated LLM accuracy × human share", "", _markdown(header, body), ""]
            page += ["<h3>Simulated LLM accuracy × human share</h3>", _html_table(header, body)]
        rungs = ladder_rungs(rows, results)
        if rungs:
            header, body, notes = ladder_table(rows, rungs)
            md += [f"### {dataset}: the ladder of LLM annotators", "", _markdown(header, body), "", *notes, ""]
            page += [
                "<h3>The ladder of LLM annotators</h3>",
                _html_table(header, body),
                *(f"<p>{html.escape(n)}</p>" for n in notes),
            ]
        drawn = [
            ladder_figure(rows, rungs, dataset, out / f"{dataset}-ladder.png") if rungs else None,
            sweep_figure(lines, dataset, out / f"{dataset}-sweep.png", marks or {}) if lines else None,
            learning_curves(rows, dataset, out / f"{dataset}-learning-curves.png"),
            cost_curves(rows, dataset, out / f"{dataset}-cost.png", human_price, llm_price),
            llm_accuracy_curves(rows, dataset, out / f"{dataset}-llm-accuracy.png"),
        ]
        for fig in filter(None, drawn):
            figures.append(fig)
            md.append(f"![{fig.stem}]({fig.name})")
            page.append(f'<p><img src="{html.escape(fig.name)}" alt="{html.escape(fig.stem)}"></p>')
        md.append("")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child,td:nth-child(2){text-align:left}img{max-width:100%}"
    )
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    html_path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>imfl benchmark report</title>"
        f"<style>{style}</style></head><body>{''.join(page)}</body></html>\n",
        encoding="utf-8",
    )
    return Report(md_path, html_path, figures, datasets)
