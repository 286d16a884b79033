"""The code's habits, checked where the one test command (scripts/test.sh, and so CI) checks everything else: ruff's
lint rules and its formatting over src/, tests/ and benchmarks/, and mypy over src/imfl. Their settings are in
pyproject.toml ([tool.ruff], [tool.mypy]); docs/contributing.md says how to run and fix them. No model: quick tier
(`pytest -m lint` runs these alone)."""

import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.lint


def check(*args: str) -> subprocess.CompletedProcess:
    """``python -m <tool> ARGS`` from the repository root, as a developer runs it."""
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_ruff_finds_nothing_to_fix():
    r = check("ruff", "check", "src", "tests", "benchmarks")
    assert r.returncode == 0, f"ruff check (`ruff check --fix src tests benchmarks`, then by hand):\n{r.stdout}{r.stderr}"


def test_the_code_is_formatted_as_ruff_formats_it():
    r = check("ruff", "format", "--check", "src", "tests", "benchmarks")
    assert r.returncode == 0, f"ruff format --check (fix with `ruff format src tests benchmarks`):\n{r.stdout}{r.stderr}"


def test_mypy_finds_no_type_errors_in_the_package():
    r = check("mypy", "src/imfl")
    assert r.returncode == 0, f"mypy src/imfl:\n{r.stdout}{r.stderr}"
