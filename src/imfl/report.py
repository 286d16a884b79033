"""Tables and figures from a grid's results: ``imfl report RESULTS_DIR``.

Per dataset: the main table shaped like the paper's (rows = strategies, columns = test accuracy and
macro-F1 as mean ± sample std over seeds, human and LLM labels used, the LLM's accuracy on its own labels),
the ablation table (each ablation's difference to IMFL with the same annotator), and three PNG figures:
test accuracy against the number of human labels (learning curves), against the annotation cost (prices
per label are parameters), and the LLM annotator's accuracy per round. ``report.md`` and ``report.html``
hold the same tables; the HTML page shows the figures too.
"""

from __future__ import annotations

import html
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imfl.bench import NO_LLM, load_results


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

    def final(self, key: str) -> np.ndarray:
        return np.array([r["final"][key] for r in self.records if r["final"].get(key) is not None], dtype=float)

    @property
    def seeds(self) -> list[int]:
        return sorted(r["cell"]["seed"] for r in self.records)

    def per_round(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Round-wise mean and std of ``key`` over the seeds that have every round (and its x: mean human labels)."""
        n = min(len(r["rounds"]) for r in self.records)
        values = np.array([[m.get(key) if m.get(key) is not None else np.nan for m in r["rounds"][:n]] for r in self.records], dtype=float)
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
    for r in records:
        c = r["cell"]
        buckets[(c["dataset"], c["strategy"], c["annotator"])].append(r)
    by_dataset: dict[str, list[Row]] = defaultdict(list)
    for (dataset, strategy, annotator), recs in buckets.items():
        c = recs[0]["cell"]
        by_dataset[dataset].append(Row(dataset, strategy, c["label"], c["group"], c["order"], annotator,
                                       c["annotator_label"], tuple(sorted(recs, key=lambda r: r["cell"]["seed"]))))
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


MAIN_HEADER = ["strategy", "LLM annotator", "human labels", "LLM labels", "test accuracy", "test macro-F1", "LLM label accuracy", "seeds"]


def main_table(rows: list[Row]) -> list[list[str]]:
    return [[row.label, "–" if row.annotator == NO_LLM else row.annotator_label, _labels(row, "human"), _labels(row, "llm"),
             _mean_std(row.final("test_accuracy")), _mean_std(row.final("test_macro_f1")), _llm_acc(row), str(len(row.records))]
            for row in rows if row.group == "main"]


ABLATION_HEADER = ["variant", "LLM annotator", "human labels", "LLM labels", "test accuracy", "Δ vs IMFL", "test macro-F1",
                   "LLM label accuracy", "seeds"]


def ablation_table(rows: list[Row]) -> list[list[str]]:
    """IMFL and each ablation with the same annotator; Δ is the mean difference over the seeds both have."""
    imfl = {row.annotator: row for row in rows if row.strategy == "imfl"}
    out = []
    for annotator in dict.fromkeys(row.annotator for row in rows if row.group == "ablation"):
        ref = imfl.get(annotator)
        for row in ([ref] if ref else []) + [r for r in rows if r.group == "ablation" and r.annotator == annotator]:
            delta = "–"
            if ref is not None and row is not ref:
                base = {r["cell"]["seed"]: r["final"]["test_accuracy"] for r in ref.records}
                diffs = np.array([r["final"]["test_accuracy"] - base[r["cell"]["seed"]] for r in row.records
                                  if r["cell"]["seed"] in base], dtype=float)
                delta = _mean_std(diffs) if diffs.size else "–"
                delta = delta if delta.startswith("-") or delta == "–" else "+" + delta
            out.append([row.label, row.annotator_label, _labels(row, "human"), _labels(row, "llm"),
                        _mean_std(row.final("test_accuracy")), delta, _mean_std(row.final("test_macro_f1")), _llm_acc(row),
                        str(len(row.records))])
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


def _band(ax, row: Row, x, mean, std):
    """A strategy's mean line with its ±std band; a strategy keeps its colour in every figure."""
    color = f"C{row.order % 10}"
    ax.plot(x, mean, "-o", label=row.label, color=color, markersize=3.5, linewidth=1.6)
    if np.any(std > 0):
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.18, linewidth=0)


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

    def draw(ax, row: Row) -> None:
        if row.group != "main":
            return
        mean, std, _ = row.per_round("test_accuracy")
        x = row.cumulative("human_total")
        if x[-1] == 0:
            ax.axhline(mean[-1], linestyle="--", linewidth=1.2, color=f"C{row.order % 10}",
                       label=f"{row.label}: {mean[-1]:.3f} with 0 human labels")
        else:
            _band(ax, row, x, mean, std)

    return _panel_figure(rows, _panels(rows), draw, "human labels used", ACCURACY, f"{dataset}: learning curves", path)


def cost_curves(rows: list[Row], dataset: str, path: Path, human_price: float, llm_price: float) -> Path:
    """Test accuracy against the money spent so far (human labels × human_price + LLM labels × llm_price)."""

    def draw(ax, row: Row) -> None:
        if row.group == "main":
            mean, std, _ = row.per_round("test_accuracy")
            _band(ax, row, row.cumulative("human_total") * human_price + row.cumulative("llm_total") * llm_price, mean, std)

    return _panel_figure(rows, _panels(rows), draw, f"annotation cost (human {human_price:g}, LLM {llm_price:g} per label)",
                         ACCURACY, f"{dataset}: accuracy against annotation cost", path)


def llm_accuracy_curves(rows: list[Row], dataset: str, path: Path) -> Path | None:
    """The LLM's accuracy on the labels it gave in each round, for every strategy that used it."""
    panels = [a for a in _panels(rows) if a != NO_LLM]
    if not panels:
        return None

    def draw(ax, row: Row) -> None:
        if row.annotator == NO_LLM:
            return
        mean, std, rounds = row.per_round("llm_accuracy")
        if not np.all(np.isnan(mean)):
            _band(ax, row, rounds, mean, std)

    def draw_rounds(ax, row: Row) -> None:
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        draw(ax, row)

    return _panel_figure(rows, panels, draw_rounds, "round", "LLM label accuracy (vs gold)",
                         f"{dataset}: the LLM annotator's accuracy per round", path)


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


def make_report(results: Path, out: Path, human_price: float = 1.0, llm_price: float = 0.01) -> Report:
    """Write report.md, report.html and the PNG figures for every dataset in ``results`` into ``out``."""
    results, out = Path(results), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    datasets = group_rows(load_results(results))
    md = [f"# Benchmark report: {results}", "",
          "Mean ± sample standard deviation over seeds of the final round's test scores. LLM label accuracy: the "
          "LLM's labels against the pool's gold labels, over every label it gave in the run.", ""]
    page = [f"<h1>Benchmark report: {html.escape(str(results))}</h1>"]
    figures: list[Path] = []
    for dataset, rows in datasets.items():
        H = rows[0].records[0]["cell"]["H"]
        md += [f"## {dataset} (H = {H})", "", _markdown(MAIN_HEADER, main_table(rows)), ""]
        page += [f"<h2>{html.escape(dataset)} (H = {H})</h2>", _html_table(MAIN_HEADER, main_table(rows))]
        ablations = ablation_table(rows)
        if ablations:
            md += [f"### {dataset}: ablations of IMFL", "", _markdown(ABLATION_HEADER, ablations), ""]
            page += ["<h3>Ablations of IMFL</h3>", _html_table(ABLATION_HEADER, ablations)]
        drawn = [learning_curves(rows, dataset, out / f"{dataset}-learning-curves.png"),
                 cost_curves(rows, dataset, out / f"{dataset}-cost.png", human_price, llm_price),
                 llm_accuracy_curves(rows, dataset, out / f"{dataset}-llm-accuracy.png")]
        for fig in filter(None, drawn):
            figures.append(fig)
            md.append(f"![{fig.stem}]({fig.name})")
            page.append(f'<p><img src="{html.escape(fig.name)}" alt="{html.escape(fig.stem)}"></p>')
        md.append("")
    style = ("body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
             "td:first-child,th:first-child,td:nth-child(2){text-align:left}img{max-width:100%}")
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    html_path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>imfl benchmark report</title>"
                         f"<style>{style}</style></head><body>{''.join(page)}</body></html>\n", encoding="utf-8")
    return Report(md_path, html_path, figures, datasets)
