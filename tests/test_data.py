import csv

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import write_jsonl
from imfl.config import DataConfig, config_from_dict, config_to_toml, load_config
from imfl.data import load_dataset
from imfl.errors import ConfigError, DataError

ROWS = [{"id": f"r{i}", "q": f"question {i}", "ctx": f"context {i}", "y": ["yes", "no", "maybe"][i % 3]} for i in range(9)]


def test_jsonl_csv_and_parquet_read_the_same(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", ROWS)
    with open(tmp_path / "p.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(ROWS[0]))
        w.writeheader()
        w.writerows(ROWS)
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "p.parquet")
    got = []
    for name in ("p.jsonl", "p.csv", "p.parquet"):
        ds = load_dataset(DataConfig(pool=tmp_path / name, text_field="q", text_pair_field="ctx", label_field="y"))
        got.append([(e.id, e.text, e.text_pair, e.label) for e in ds.pool])
        assert ds.task.labels == ("maybe", "no", "yes") and ds.task.has_pair
    assert got[0] == got[1] == got[2]


def qa_rows(prefix: str, n: int) -> list[dict]:
    """Rows in the shared PubMedQA format: a question, its context as text_pair, a label and a recorded LLM label."""
    labels = ["yes", "no", "maybe"]
    return [
        {
            "id": f"{prefix}{i}",
            "text": f"{prefix} question {i}?",
            "text_pair": f"{prefix} context {i}",
            "label": labels[i % 3],
            "llm_gpt4_medrag": labels[(i + 1) % 3],
        }
        for i in range(n)
    ]


def test_two_input_task_is_detected(tmp_path):
    pool, test = write_jsonl(tmp_path / "pool.jsonl", qa_rows("p", 12)), write_jsonl(tmp_path / "test.jsonl", qa_rows("t", 6))
    ds = load_dataset(DataConfig(pool=pool, test=test))
    assert ds.task.has_pair and len(ds.pool) == 12 and len(ds.test) == 6
    assert set(ds.task.labels) == {"yes", "no", "maybe"}
    assert "llm_gpt4_medrag" in next(iter(ds.pool)).extra


def test_instruction_names_the_labels(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", ROWS)
    ds = load_dataset(DataConfig(pool=tmp_path / "p.jsonl", text_field="q", label_field="y", labels=["yes", "no", "maybe"]))
    assert ds.task.labels == ("yes", "no", "maybe")  # the configured order is kept
    assert "yes, no, maybe" in ds.task.instruction


def test_pool_without_labels_needs_a_label_set(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}])
    with pytest.raises(DataError, match="data.labels"):
        load_dataset(DataConfig(pool=tmp_path / "p.jsonl"))
    ds = load_dataset(DataConfig(pool=tmp_path / "p.jsonl", labels=["good", "bad"]))
    assert [e.label for e in ds.pool] == [None, None]


def test_config_roundtrip_and_overrides(tmp_path):
    cfg = config_from_dict({"data": {"pool": "p.jsonl"}}, ["budget.total=500", 'llm.demos="random"', "student.weights.llm=0.5"])
    assert cfg.budget.total == 500 and cfg.llm.demos == "random" and cfg.student.weights == {"human": 1.0, "llm": 0.5}
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(cfg))
    again = load_config(path)
    assert again.budget == cfg.budget and again.student == cfg.student
    assert again.data.pool == tmp_path / "p.jsonl"  # relative paths are relative to the file


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError) as e:
        config_from_dict({"data": {"pool": "p"}, "budget": {"total": 10, "human": 20}})
    assert "budget.human is 20" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="data is required"):
        config_from_dict({})
    with pytest.raises(ConfigError, match="key=value"):
        config_from_dict({"data": {"pool": "p"}}, ["budget.total"])


def test_pool_and_test_samples_are_fixed_subsets_in_file_order(tmp_path):
    labels = ["neutral", "positive", "negative"]
    pool = write_jsonl(
        tmp_path / "pool.jsonl", [{"id": f"p{i}", "text": f"pool {i}", "label": labels[i % 3]} for i in range(120)]
    )
    test = write_jsonl(tmp_path / "test.jsonl", [{"id": f"t{i}", "text": f"test {i}", "label": labels[i % 3]} for i in range(40)])
    full = load_dataset(DataConfig(pool=pool, test=test))
    cfg = DataConfig(pool=pool, test=test, pool_sample=30, test_sample=10)
    a, b = load_dataset(cfg), load_dataset(cfg)
    assert len(a.pool) == 30 and len(a.test) == 10
    assert [e.id for e in a.pool] == [e.id for e in b.pool]  # the same sample every time (every seed)
    position = {e.id: i for i, e in enumerate(full.pool)}
    assert [position[e.id] for e in a.pool] == sorted(position[e.id] for e in a.pool)
    assert a.task.labels == full.task.labels
    with pytest.raises(DataError, match=f"data.pool_sample is 10000 but the pool file has only {len(full.pool)} rows"):
        load_dataset(cfg.model_copy(update={"pool_sample": 10_000}))  # not silently the whole pool
