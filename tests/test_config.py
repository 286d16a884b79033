"""The configuration reference in the docs is the one the code generates, so it cannot drift."""

from pathlib import Path

from imfl.config import reference_table

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "reference" / "configuration.md"


def test_the_configuration_reference_lists_every_setting_with_its_default():
    table = reference_table()
    assert "| `llm.dtype` | `auto` |" in table and "| `data.pool` | required |" in table
    assert table in REFERENCE.read_text(encoding="utf-8"), (
        f"{REFERENCE.relative_to(REFERENCE.parents[2])} is stale (a setting was added or changed in src/imfl/config.py): "
        "regenerate its table with `.venv/bin/python -c 'from imfl.config import reference_table; print(reference_table())'` "
        "and paste the output over the table on that page"
    )


def test_a_section_added_since_a_store_was_written_agrees_while_at_its_defaults():
    """Stores written before [fidelity] existed (their TOML has no such table) continue while it stays at defaults."""
    from imfl.config import settings_difference

    old = {"seed": 0, "budget": {"total": 10, "human": 5}}
    new = {"seed": 0, "budget": {"total": 10, "human": 5}, "fidelity": {"weighting": False, "adaptive": False}}
    assert settings_difference(old, new) is None
    new["fidelity"]["adaptive"] = True
    assert settings_difference(old, new) == "fidelity.adaptive: None then, True now"
    assert settings_difference(old, {**new, "seed": 1}) == "fidelity.adaptive: None then, True now"  # first in order
    assert settings_difference({**old, "seed": 1}, {**new, "fidelity": {}}) == "seed: 1 then, 0 now"


def test_the_engine_is_not_part_of_a_runs_identity():
    """A run started in process may be continued on Ray and back: same results, so no "different configuration"."""
    from imfl.config import settings_difference

    old = {"seed": 0, "engine": "local", "ray": {"actors": 2}}
    assert settings_difference(old, {"seed": 0, "engine": "ray", "ray": {"actors": 8, "address": "ray://head:10001"}}) is None
    assert settings_difference(old, {"seed": 1, "engine": "ray"}) == "seed: 0 then, 1 now"
