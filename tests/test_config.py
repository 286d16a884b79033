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
    # nor are thread counts (the demo pins them to repeat a grid cell; a run may continue on another machine)
    pinned = {"seed": 0, "student": {"num_threads": 1, "epochs": 4}, "embeddings": {"num_threads": 1}}
    assert settings_difference(pinned, {"seed": 0, "student": {"epochs": 4}, "embeddings": {"num_threads": 2}}) is None
    assert settings_difference(pinned, {**pinned, "student": {"epochs": 5}}) == "student.epochs: 4 then, 5 now"


def test_a_renamed_setting_is_still_read_under_its_old_name(tmp_path):
    """query.strategy became query.acquisition: old config files, --set and stored configurations still work, both
    names at once is a one-line error, and the committed benchmark cells (written under the old name) still count
    as made with the grid's configuration."""
    import pytest

    from imfl.bench import load_grid, pending_cells
    from imfl.config import config_from_dict, load_config, settings_difference
    from imfl.errors import ConfigError

    (tmp_path / "old.toml").write_text('[data]\npool = "pool.jsonl"\n\n[query]\nstrategy = "random"\n', encoding="utf-8")
    assert load_config(tmp_path / "old.toml").query.acquisition == "random"
    assert config_from_dict({"data": {"pool": "p"}}, ["query.strategy=diversity"]).query.acquisition == "diversity"
    with pytest.raises(ConfigError, match="query.strategy and query.acquisition are both set"):
        config_from_dict({"data": {"pool": "p"}, "query": {"strategy": "eeq", "acquisition": "random"}})
    assert settings_difference({"query": {"strategy": "eeq"}}, {"query": {"acquisition": "eeq"}}) is None
    assert settings_difference({"query": {"strategy": "eeq"}}, {"query": {"acquisition": "random"}}) == (
        "query.acquisition: 'eeq' then, 'random' now"
    )
    grid = load_grid(Path(__file__).resolve().parents[1] / "benchmarks" / "paper.toml")
    done, todo = pending_cells(grid, ["fpb/*"])
    assert done and not todo
