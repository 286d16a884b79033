"""More bad input (beside test_bad_input.py), all refused before any model loads: labels that are spellings of one
another, a label set of one, text that is not UTF-8, settings of the wrong type, several unknown settings, samples
larger than their files. And the rates of the progress lines written to logs."""

import csv
import json
import time

import pytest

from conftest import write_jsonl
from imfl.config import DataConfig, config_from_dict, load_config
from imfl.data import load_dataset, read_rows
from imfl.errors import ConfigError, DataError
from imfl.progress import Lines
from test_bad_input import GOOD_POOL, GOOD_TEST, check_fails, write_config

LABELS = ["neutral", "positive", "negative"]


# -- labels ----------------------------------------------------------------------------------------------------------


def variant_pool():
    rows = [dict(r) for r in GOOD_POOL]
    rows[4]["label"] = "Positive "  # line 5; 'positive' first appears on line 2 of both files
    rows[7]["label"] = " NEGATIVE"  # line 8; 'negative' first appears on line 3
    return rows


def test_label_variants_are_refused_with_the_first_line_of_each(tmp_path):
    cfg = write_config(tmp_path, variant_pool())
    err = check_fails(
        tmp_path,
        cfg,
        "differ only in case or spaces",
        "'NEGATIVE' (",
        "pool.jsonl:8)",
        "'negative' (",
        "test.jsonl:3)",
        "'Positive' (",
        "pool.jsonl:5)",
        "'positive' (",
        "test.jsonl:2)",
        args=["--set", 'human.annotator="people"'],
    )  # a regression stops at round 1, untrained
    assert "'neutral'" not in err  # only the labels with a variant are named


def test_label_variants_in_the_pool_alone(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", variant_pool())
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(pool=tmp_path / "p.jsonl"))
    assert f"'Positive' ({tmp_path / 'p.jsonl'}:5) and 'positive' ({tmp_path / 'p.jsonl'}:2)" in str(e.value)


def test_distinct_labels_and_surrounding_spaces_are_fine(tmp_path):
    rows = [dict(r) for r in GOOD_POOL]
    rows[4]["label"] = "positive "  # the same label once stripped
    rows[5]["label"] = "Neutral-ish"  # another label, not a spelling of 'neutral'
    write_jsonl(tmp_path / "p.jsonl", rows)
    assert load_dataset(DataConfig(pool=tmp_path / "p.jsonl")).task.labels == ("Neutral-ish", "negative", "neutral", "positive")


def test_declared_labels_that_are_variants_are_refused():
    with pytest.raises(ConfigError, match=r"data.labels .*'Positive', 'positive'.* differ only in case or spaces"):
        config_from_dict({"data": {"pool": "p.jsonl", "labels": ["Positive", "negative", "positive"]}})


def test_a_single_declared_label_is_refused_before_any_row_is_read(tmp_path):
    cfg = write_config(tmp_path, GOOD_POOL)
    check_fails(tmp_path, cfg, "data.labels", "one label ('neutral')", "at least two", args=["--set", 'data.labels=["neutral"]'])
    with pytest.raises(ConfigError, match="at least two"):
        config_from_dict({"data": {"pool": "not-read.jsonl", "labels": ["neutral"]}})


def test_files_with_a_single_label_are_refused(tmp_path):
    pool = write_jsonl(tmp_path / "pool.jsonl", [dict(r, label="neutral") for r in GOOD_POOL])
    test = write_jsonl(tmp_path / "test.jsonl", [dict(r, label="neutral") for r in GOOD_TEST])
    with pytest.raises(DataError) as e:
        load_dataset(DataConfig(pool=pool, test=test))
    assert (
        f"{pool} and {test}: only one label ('neutral') in field 'label'; a classifier needs at least two: check "
        "data.label_field, or list the label set in data.labels"
    ) == str(e.value)


# -- encodings -------------------------------------------------------------------------------------------------------


def test_non_utf8_jsonl_names_line_and_byte_offset(tmp_path):
    cfg = write_config(tmp_path, GOOD_POOL)
    before = "".join(json.dumps(r) + "\n" for r in GOOD_POOL[:2]).encode()
    bad = '{"id": "p2", "text": "caf\xe9 au lait", "label": "negative"}\n'.encode("latin-1")  # line 3
    after = "".join(json.dumps(r) + "\n" for r in GOOD_POOL[3:]).encode()
    (tmp_path / "pool.jsonl").write_bytes(before + bad + after)
    column = bad.index(b"\xe9")
    check_fails(
        tmp_path,
        cfg,
        "pool.jsonl:3:",
        "byte 0xe9",
        f"byte offset {len(before) + column}",
        f"(column {column + 1} ",
        "save the file as UTF-8",
    )


def test_non_utf8_csv_names_line_and_byte_offset(tmp_path):
    path = tmp_path / "pool.csv"
    path.write_bytes("id,text,label\na,good,positive\nb,na\xefve,negative\n".encode("latin-1"))
    with pytest.raises(DataError) as e:
        list(read_rows(path))
    assert f"{path}:3: byte 0xef at byte offset 34 (column 5 of the line) is not UTF-8" in str(e.value)


def test_a_byte_order_mark_is_accepted(tmp_path):
    bom = b"\xef\xbb\xbf"
    (tmp_path / "p.jsonl").write_bytes(bom + "".join(json.dumps(r) + "\n" for r in GOOD_POOL).encode())
    with open(tmp_path / "p.csv", "w", newline="", encoding="utf-8-sig") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "text", "label"])
        w.writeheader()
        w.writerows(GOOD_POOL)
    assert (tmp_path / "p.csv").read_bytes().startswith(bom)
    for name in ("p.jsonl", "p.csv"):
        ds = load_dataset(DataConfig(pool=tmp_path / name))
        assert [e.id for e in ds.pool] == [r["id"] for r in GOOD_POOL], name
    (tmp_path / "c.toml").write_bytes(bom + b'[data]\npool = "p.jsonl"\n')
    assert load_config(tmp_path / "c.toml").data.pool == tmp_path / "p.jsonl"


def test_non_utf8_config_names_line_and_byte_offset(tmp_path):
    (tmp_path / "c.toml").write_bytes('name = "r\xe9sum\xe9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"c.toml:1: byte 0xe9 at byte offset 9 .*save the file as UTF-8"):
        load_config(tmp_path / "c.toml")


# -- settings --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, where, wanted",
    [
        ("student.epochs=true", "student.epochs", "integer (got True)"),
        ("budget.rounds=2.0", "budget.rounds", "integer (got 2.0)"),
        ('seed="2"', "seed", "integer (got '2')"),
        ("human.show_guesses=1", "human.show_guesses", "boolean (got 1)"),
        ("llm.temperature=false", "llm.temperature", "number (got False)"),
        ("student.weights.llm=true", "student.weights.llm", "number (got True)"),
    ],
)
def test_settings_are_strictly_typed(override, where, wanted):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"data": {"pool": "p.jsonl"}}, [override])
    assert where in str(e.value) and wanted in str(e.value)


def test_a_boolean_for_a_number_is_refused_on_the_command_line(tmp_path):
    cfg = write_config(tmp_path, GOOD_POOL)
    check_fails(tmp_path, cfg, "student.epochs", "valid integer", args=["--set", "student.epochs=true"])


def test_set_values_are_read_as_toml_literals_and_whole_numbers_fit_decimal_settings(tmp_path):
    cfg = config_from_dict(
        {"data": {"pool": "p.jsonl"}, "budget": {"decay": 1}},
        [
            "budget.total=500",
            "llm.temperature=1",
            "human.show_guesses=true",
            "data.pool=other.csv",
            'data.labels=["a", "b"]',
            "fidelity.route_threshold=0.7",
        ],
    )
    assert cfg.budget.total == 500 and cfg.budget.decay == 1.0 and cfg.llm.temperature == 1.0
    assert cfg.human.show_guesses is True and str(cfg.data.pool) == "other.csv" and cfg.data.labels == ["a", "b"]
    assert cfg.fidelity.route_threshold == 0.7


def test_every_unknown_setting_is_named(tmp_path):
    cfg = write_config(tmp_path, GOOD_POOL, extra="bogus = 1")
    err = check_fails(
        tmp_path,
        cfg,
        "bogus, budget.totl, llm.modle are not known settings",
        "check the spelling",
        args=["--set", "budget.totl=5", "--set", 'llm.modle="x"'],
    )
    assert err.count("imfl: error:") == 1


# -- samples ---------------------------------------------------------------------------------------------------------


def test_a_pool_sample_larger_than_the_pool_is_refused(tmp_path):
    cfg = write_config(tmp_path, GOOD_POOL)
    check_fails(tmp_path, cfg, "pool.jsonl", "data.pool_sample is 50", "only 12 rows", args=["--set", "data.pool_sample=50"])
    write_jsonl(tmp_path / "p.jsonl", GOOD_POOL)
    assert len(load_dataset(DataConfig(pool=tmp_path / "p.jsonl", pool_sample=12)).pool) == 12  # all of them: fine


def test_a_test_sample_larger_than_the_test_file_is_refused(tmp_path):
    pool, test = write_jsonl(tmp_path / "pool.jsonl", GOOD_POOL), write_jsonl(tmp_path / "test.jsonl", GOOD_TEST)
    with pytest.raises(DataError, match="test.jsonl: data.test_sample is 7 but the test file has only 6 rows"):
        load_dataset(DataConfig(pool=pool, test=test, test_sample=7))
    assert len(load_dataset(DataConfig(pool=pool, test=test, test_sample=6)).test) == 6


def test_budget_larger_than_a_pool_sample_names_sample_and_file(tmp_path):
    cfg = write_config(tmp_path, GOOD_POOL)
    check_fails(
        tmp_path,
        cfg,
        "budget.total (6) is larger than the pool (5 items: a sample (data.pool_sample) of the 12 rows",
        "pool.jsonl",
        args=["--set", "data.pool_sample=5"],
    )


# -- progress lines --------------------------------------------------------------------------------------------------


def phase_line(total, seconds: float = 0.0) -> str:
    lines = []
    with Lines(lines.append).phase("embedding pool", total):
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:  # a step that takes at least this long
            time.sleep(0.05)
    (line,) = lines
    return line


def test_progress_lines_give_a_rate_only_when_it_means_something():
    assert "/s" not in phase_line(100_000)  # took no time: a rate would be noise
    assert "/s" not in phase_line(1, seconds=0.6)  # one item: the time says it all
    slow = phase_line(30, seconds=0.6)
    assert slow.startswith("embedding pool: 30 in ") and slow.endswith("/s)")
    assert 0 < float(slow.rsplit("(", 1)[1].removesuffix("/s)")) <= 30 / 0.6
