"""The Python API as a notebook uses it: every public name imports, importing and using imfl leaves os.environ alone,
and annotator objects of the user's own (anything with ``annotate(items, context)``) run the loop in place of the
configured LLM and human, with their answers checked, on a small slice of real FPB data with the real student."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib

import pytest

import imfl
from conftest import read_jsonl, small_config

# Variables imfl used to set on import (or a test process sets): the check runs without any of them.
OWN_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "ONEDNN_", "TOKENIZERS_")

ENV_SCRIPT = r"""
import json, os
start = dict(os.environ)

def changed(since):
    now = dict(os.environ)
    return {k: [since.get(k), now.get(k)] for k in sorted(set(since) | set(now)) if since.get(k) != now.get(k)}

report = {}
import imfl
report["import imfl"] = changed(start)
# Third-party libraries imfl uses set a few variables of their own when imported (scikit-learn: KMP_INIT_AT_FORK,
# KMP_DUPLICATE_LIB_OK; torch's inductor: TORCHINDUCTOR_CACHE_DIR): imported first, they are the baseline.
import peft, sentence_transformers, sklearn, torch, transformers  # noqa: F401
baseline = dict(os.environ)
for name in imfl.__all__:
    getattr(imfl, name)
namespace = {}
exec("from imfl import *", namespace)
report["missing"] = [n for n in imfl.__all__ if n not in namespace]
report["every name"] = changed(baseline)
vectors = imfl.Embedder().encode(["Operating profit rose to EUR 13.1 mn."])  # loads all-MiniLM-L6-v2
report["shape"] = list(vectors.shape)
report["after a model"] = changed(baseline)
report["own variables"] = sorted(k for k in os.environ if k.startswith(%r))
print(json.dumps(report))
""" % (OWN_PREFIXES,)  # noqa: UP031 - a script template: str.format would need every brace in it doubled


@pytest.mark.slow
def test_import_and_models_leave_the_environment_alone(imfl_cache):
    env = {k: v for k, v in os.environ.items() if not k.startswith(OWN_PREFIXES)}
    env["IMFL_CACHE"] = str(imfl_cache)
    proc = subprocess.run([sys.executable, "-c", ENV_SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["import imfl"] == {}
    assert report["missing"] == []
    assert report["every name"] == {}
    assert report["shape"] == [1, 384]  # the model loaded from its local folder, no offline switch needed
    assert report["after a model"] == {}
    assert report["own variables"] == []


def test_every_public_name_resolves():
    assert len(set(imfl.__all__)) == len(imfl.__all__)
    for name in imfl.__all__:
        assert getattr(imfl, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        imfl.nope  # noqa: B018


# -- annotator objects ------------------------------------------------------------------------------------------------

POSITIVE = (" rose ", " increased ", " grew ", " up ", "profit")
NEGATIVE = (" fell ", " decreased ", " down ", " loss", " cut ")


class KeywordRule:
    """A user's LLM stand-in: a keyword rule, and no label at all (None) for sentences with a digit 7 in them."""

    def __init__(self):
        self.calls = []  # (round, number of items, human labels it could use as demonstrations)

    def annotate(self, items, context):
        self.calls.append((context.round, len(items), len(context.human_labeled)))
        return [None if "7" in e.text else self.label(e.text) for e in items]

    @staticmethod
    def label(text):
        t = f" {text.lower()} "
        return "positive" if any(w in t for w in POSITIVE) else "negative" if any(w in t for w in NEGATIVE) else "neutral"


class TeamLabels:
    """A user's human stand-in (e.g. a bridge to a labeling tool): labels looked up in a dict, named by ``name``."""

    name = "team"

    def __init__(self, gold):
        self.gold = gold
        self.asked = []

    def annotate(self, items, context):
        self.asked += [e.id for e in items]
        return [
            imfl.Annotation(e.id, context.round, "human", self.name, self.gold[e.id], confidence=1.0, cost=2.0) for e in items
        ]


def tiny(small_fpb, out, cache, name="api", **over):
    settings = {
        "name": name,
        "seed": 0,
        "strategy": "imfl",
        "output_dir": str(out),
        "cache_dir": str(cache),
        "data": {"pool": str(small_fpb["pool"]), "test": str(small_fpb["test"])},
        "budget": {"total": 30, "human": 10, "rounds": 2},
        "student": {"epochs": 1, "min_steps": 0, "max_length": 32, "batch_size": 16},
    }
    return small_config(settings, **over)


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory, small_fpb, imfl_cache):
    gold = {r["id"]: r["label"] for r in read_jsonl(small_fpb["pool"])}
    cfg = tiny(small_fpb, tmp_path_factory.mktemp("api-runs"), imfl_cache)
    llm, human = KeywordRule(), TeamLabels(gold)
    return cfg, llm, human, gold, imfl.run(cfg, llm=llm, human=human)


@pytest.mark.slow
def test_a_run_with_annotator_objects_records_their_labels(custom_run, small_fpb):
    cfg, llm, human, gold, result = custom_run
    texts = {r["id"]: r["text"] for r in read_jsonl(small_fpb["pool"])}
    assert [m["round"] for m in result.metrics] == [1, 2]
    assert [c[0] for c in llm.calls] == [1, 2] and all(c[2] > 0 for c in llm.calls)  # after the humans: demos
    labels = read_jsonl(result.run_dir / "labels.jsonl")
    by_source = {s: [r for r in labels if r["source"] == s] for s in ("human", "llm")}
    assert {r["annotator"] for r in by_source["llm"]} == {"KeywordRule"}  # the class name
    assert {r["annotator"] for r in by_source["human"]} == {"team"}  # the name attribute
    assert all(r["label"] == KeywordRule.label(texts[r["id"]]) for r in by_source["llm"])
    assert all(r["label"] == gold[r["id"]] for r in by_source["human"])
    assert sorted(r["id"] for r in by_source["human"]) == sorted(human.asked)
    # None is no label: never stored, no budget spent.
    assert not any("7" in texts[r["id"]] for r in by_source["llm"])
    assert result.budget_used == {"human": 10, "llm": len(by_source["llm"])}
    assert 0 < len(by_source["llm"]) <= 20
    recorded = tomllib.loads((result.run_dir / "config.toml").read_text())
    assert recorded["llm"]["annotator"] == "custom:KeywordRule"
    assert recorded["human"]["annotator"] == "custom:team"
    assert cfg.llm.annotator == "local"  # the caller's config is left as it was


@pytest.mark.slow
def test_the_result_gives_the_trained_student(custom_run):
    cfg, llm, human, gold, result = custom_run
    texts = ["Operating profit rose to EUR 13.1 mn from EUR 8.7 mn.", "The company will cut 200 jobs.", "It is in Espoo."]
    predicted = result.student.predict(texts)
    assert len(predicted) == 3 and set(predicted) <= {"neutral", "positive", "negative"}
    assert result.student is result.student  # loaded once
    proba = result.student.predict_proba(texts)
    assert predicted == [result.student.classes_[i] for i in proba.argmax(axis=1)]


@pytest.mark.slow
def test_continuing_needs_the_same_objects_again(custom_run):
    cfg, llm, human, gold, result = custom_run
    with pytest.raises(imfl.ConfigError) as err:  # the configured annotators instead of the objects
        imfl.run(cfg)
    assert "\n" not in str(err.value) and "custom:" in str(err.value)
    with pytest.raises(imfl.ConfigError) as err:  # the run's own config.toml names the objects, which are not given
        imfl.run(imfl.load_config(result.run_dir / "config.toml"), llm=KeywordRule())
    message = str(err.value)
    assert "\n" not in message and "human.annotator = 'custom:team'" in message and "human=" in message
    calls = len(llm.calls)
    again = imfl.run(cfg, llm=llm, human=TeamLabels(gold))  # the same names: the finished run, nothing asked again
    assert again.metrics == result.metrics and len(llm.calls) == calls


class Answers:
    """An annotator whose answers are whatever ``answer(items)`` makes of the items."""

    def __init__(self, answer):
        self.answer = answer

    def annotate(self, items, context):
        return self.answer(items)


@pytest.mark.slow
@pytest.mark.parametrize(
    "answer, message",
    [
        (lambda items: ["neutral"] * (len(items) - 1), r"Answers\.annotate returned \d+ answers for \d+ items"),
        (lambda items: ["Positive"] * len(items), r"Answers gave item 'fpb-\d+' the label 'Positive', which is not one of"),
        (lambda items: [1] * len(items), r"returned int 1 for item 'fpb-\d+'"),
        (lambda items: "neutral", r"returned str 'neutral' for \d+ items"),
    ],
    ids=["count", "label", "type", "string"],
)
def test_wrong_answers_stop_the_run_with_one_line(answer, message, tmp_path, small_fpb, imfl_cache):
    with pytest.raises(imfl.AnnotatorError, match=message) as err:
        imfl.run(tiny(small_fpb, tmp_path, imfl_cache), llm=Answers(answer))
    assert "\n" not in str(err.value)
    labels = tmp_path / "api" / "labels.jsonl"
    assert not labels.exists() or all(r["source"] == "human" for r in read_jsonl(labels))


def test_an_object_without_annotate_is_refused_at_once(tiny_data, tmp_path, imfl_cache):
    cfg = tiny(tiny_data, tmp_path, imfl_cache)
    with pytest.raises(imfl.AnnotatorError, match="got the class KeywordRule, not an object"):
        imfl.run(cfg, llm=KeywordRule)
    with pytest.raises(imfl.AnnotatorError, match="has no method annotate"):
        imfl.run(cfg, human=lambda items: items)
    assert not (tmp_path / "api").exists()
