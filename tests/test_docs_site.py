"""The docs site builds with `mkdocs build --strict` (broken links, missing anchors, missing snippets, docstrings the
API reference cannot render: each fails the build), its key pages come out with what they promise, and the links of
README.md and BENCHMARKS.md, which are read outside the site, point at files that exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

PAGES = [
    "index.html",
    "concepts/index.html",
    "quickstarts/index.html",
    "architecture/index.html",
    "reliability/index.html",
    "contributing/index.html",
    *(
        f"guides/{g}/index.html"
        for g in ("your-data", "llm-backends", "people", "fidelity", "money", "experiments", "ray", "model")
    ),
    *(f"reference/{r}/index.html" for r in ("configuration", "cli", "api")),
    *(
        f"benchmarks/{b}/index.html"
        for b in (
            "paper-grid",
            "ablations",
            "fidelity",
            "sweep",
            "ladders",
            "llm-label-value",
            "embedded-llm",
            "reading",
            "student",
            "speed",
        )
    ),
    "benchmarks/index.html",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's banner about MkDocs 2 (not a build warning)
    # From the repository root: the snippets (--8<-- "README.md:...") are read relative to it.
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return out


def test_the_site_builds_strictly_with_every_key_page(site):
    missing = [p for p in PAGES if not (site / p).is_file()]
    assert not missing, f"pages missing from the built site: {missing}"


def test_the_pages_carry_what_they_promise(site):
    def page(path: str) -> str:
        return (site / path).read_text(encoding="utf-8")

    assert "`llm.eval_sample`" not in page("reference/configuration/index.html")  # rendered as code, not raw markdown
    assert "<code>llm.eval_sample</code>" in page("reference/configuration/index.html")
    api = page("reference/api/index.html")
    for name in (
        "imfl.loop.run",
        "imfl.student.Student",
        "imfl.config.load_config",
        "imfl.report.make_report",
        "imfl.annotators.llm.LLMAnnotator",
    ):
        assert f'id="{name}"' in api, f"the API reference lost {name}"
    assert 'class="mermaid"' in page("concepts/index.html")  # the diagram of one round
    quick = page("quickstarts/index.html")
    assert "<code>context.human_labeled</code>" in quick and "--8&lt;--" not in quick  # README's sections, as snippets
    results = page("benchmarks/index.html")
    assert "--8&lt;--" not in results and "fidelity-aware IMFL" in results and "0.773 ± 0.003" in results
    for picture in ("annotation-page.png", "benchmarks/figures/fpb-recorded-ladder.png", "benchmarks/figures/fpb-sweep.png"):
        assert (site / picture).stat().st_size > 10_000, picture


LINK = re.compile(r"\]\(([^)\s]+)\)")


def _slugs(markdown: str) -> set[str]:
    """Anchors of a page's headings, as GitHub and MkDocs make them (they differ on runs of punctuation)."""
    out = set()
    for heading in re.findall(r"^#+\s+(.*)$", markdown, re.M):
        text = heading.strip().lower()
        out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))  # GitHub
        out.add(re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text)).strip("-"))  # Python-Markdown's toc
    return out


@pytest.mark.parametrize("doc", ["README.md", "BENCHMARKS.md"])
def test_the_links_of_the_top_level_pages_point_at_files_and_headings(doc):
    text = (REPO / doc).read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+://", target) or target.startswith("#"):
            continue
        path, _, anchor = target.partition("#")
        file = REPO / path
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _slugs(file.read_text(encoding="utf-8")):
            broken.append(target)
    assert not broken, f"{doc} links to what is not there: {broken}"


def test_the_top_level_pages_stay_short():
    """The front door and the results page: the rest lives in docs/ (issue 41)."""
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 250
    assert len((REPO / "BENCHMARKS.md").read_text(encoding="utf-8").splitlines()) <= 400
