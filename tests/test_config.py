"""The README's configuration reference is the one the code generates, so it cannot drift."""

from pathlib import Path

from imfl.config import reference_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_lists_every_setting_with_its_default():
    table = reference_table()
    assert "| `llm.dtype` | `auto` |" in table and "| `data.pool` | required |" in table
    assert table in README.read_text(encoding="utf-8"), (
        "README's configuration reference is stale: paste the output of "
        "`python -c 'from imfl.config import reference_table; print(reference_table())'`"
    )
