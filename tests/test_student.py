"""Student: real base model (the bundled all-MiniLM-L6-v2), no mocks; tiny data, short inputs, few steps."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from imfl.errors import ModelError
from imfl.student import Student

# The tests that train (load the model) are marked slow; the refusals before any loading are quick.

GOOD = [
    "Profit rose sharply and the company raised its dividend.",
    "Net sales increased by 25 % to a record high.",
    "The group reported strong growth in operating profit.",
    "Shares jumped after the firm beat earnings forecasts.",
    "Orders grew strongly and margins improved.",
    "Revenue climbed to an all-time high this quarter.",
    "The company won a large new contract and expects higher profit.",
    "Operating income more than doubled from last year.",
    "Earnings per share rose and the outlook was upgraded.",
    "Sales volumes increased and profitability improved significantly.",
    "The bank posted record profit and a bigger dividend.",
    "Quarterly profit beat expectations thanks to strong demand.",
    "Cash flow improved and debt was cut substantially.",
    "The retailer's sales growth accelerated in all markets.",
    "The stock rallied after results exceeded guidance.",
    "Profit before taxes increased to EUR 12 million from EUR 5 million.",
    "Strong demand lifted revenue and market share gains continued.",
    "The airline returned to profit and passenger numbers grew.",
    "Full-year earnings rose and the board proposed a higher payout.",
    "Margins widened as costs fell and prices rose.",
]
BAD = [
    "Net loss widened and the company cut its dividend.",
    "Sales fell by 30 % to the lowest level in a decade.",
    "The group reported a sharp drop in operating profit.",
    "Shares plunged after the firm missed earnings forecasts.",
    "Orders collapsed and margins deteriorated.",
    "Revenue declined for the fifth straight quarter.",
    "The company lost a major contract and warned of lower profit.",
    "Operating loss more than doubled from last year.",
    "Earnings per share fell and the outlook was downgraded.",
    "Sales volumes decreased and the firm slipped into the red.",
    "The bank posted a record loss and scrapped its dividend.",
    "Quarterly profit missed expectations due to weak demand.",
    "Cash flow weakened and debt rose sharply.",
    "The retailer's sales shrank in all markets.",
    "The stock slumped after results fell short of guidance.",
    "Loss before taxes increased to EUR 12 million from EUR 5 million.",
    "Weak demand hit revenue and market share losses continued.",
    "The airline swung to a loss and passenger numbers dropped.",
    "Full-year earnings fell and the board cut the payout.",
    "Margins narrowed as costs rose and prices fell.",
]
TEXTS = GOOD + BAD
LABELS = [0] * len(GOOD) + [1] * len(BAD)
# Short fast settings; enough optimizer steps (4 epochs x 5 batches) for the toy task to be learned.
# One thread: on a CPU shared with other busy processes, torch's 2-thread kernels run over 10x slower.
FAST = dict(epochs=4, min_steps=0, batch_size=8, max_length=32, seed=0, num_threads=1)


@pytest.fixture(scope="module")
def fitted() -> tuple[Student, np.ndarray]:
    student = Student(**FAST).fit(TEXTS, LABELS, 2)
    return student, student.predict_proba(TEXTS)


def test_constructor_only_stores_arguments() -> None:
    s = Student("/no/such/dir", epochs=2, learning_rate=0.5)  # no loading, so no error yet
    assert s.model == "/no/such/dir" and s.epochs == 2 and s.learning_rate == 0.5
    assert s.get_params()["epochs"] == 2
    # set_params as scikit-learn's: returns the estimator; an unknown name is refused by name.
    assert s.set_params(epochs=3, min_steps=0) is s and s.get_params()["epochs"] == 3 and s.min_steps == 0
    with pytest.raises(ModelError, match="no parameter 'epoch'"):
        s.set_params(epoch=1)


def test_the_run_builds_its_student_from_every_student_setting() -> None:
    from imfl.config import config_from_dict
    from imfl.loop import make_student

    cfg = config_from_dict({"data": {"pool": "pool.jsonl"}}, ["student.lora_r=4", "student.contrastive_pairs=10"])
    params = make_student(cfg, seed=7).get_params()
    settings = cfg.student.model_dump()
    shared = set(params) & set(settings)
    assert {"epochs", "lora_r", "predict_dtype", "train_dtype", "contrastive_learning_rate"} <= shared
    assert all(params[k] == settings[k] for k in shared) and params["seed"] == 7


@pytest.mark.slow
def test_predict_proba_shape_and_rows_sum_to_one(fitted) -> None:
    student, probs = fitted
    assert probs.shape == (len(TEXTS), 2)
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert student.predict_proba([]).shape == (0, 2)


@pytest.mark.slow
def test_learns_a_separable_toy_task(fitted) -> None:
    _, probs = fitted
    accuracy = float((probs.argmax(axis=1) == np.array(LABELS)).mean())
    assert accuracy >= 0.85, accuracy


@pytest.mark.slow
def test_predict_proba_keeps_input_order_whatever_the_batching(fitted) -> None:
    student, probs = fitted
    order = np.random.default_rng(1).permutation(len(TEXTS))
    shuffled = student.predict_proba([TEXTS[i] for i in order], batch_size=3)
    np.testing.assert_allclose(shuffled, probs[order], atol=1e-5)
    single = student.predict_proba([TEXTS[5]])
    np.testing.assert_allclose(single[0], probs[5], atol=1e-5)


@pytest.fixture(scope="module")
def quick() -> tuple[np.ndarray, list[int]]:
    """One epoch on 16 items, seed 0: probabilities on TEXTS and the progress calls of fit."""
    seen: list[int] = []
    student = Student(**{**FAST, "epochs": 1}).fit(TEXTS[::5] + TEXTS[1::5], LABELS[::5] + LABELS[1::5], 2, progress=seen.append)
    return student.predict_proba(TEXTS), seen


@pytest.mark.slow
def test_bfloat16_prediction_is_close_to_float32(fitted) -> None:
    student, _ = fitted
    got = {}
    try:
        for dtype in ("float32", "bfloat16"):
            student.predict_dtype = dtype
            got[dtype] = student.predict_proba(TEXTS)
    finally:
        student.predict_dtype = "float32"
    np.testing.assert_allclose(got["bfloat16"].sum(axis=1), 1.0, atol=1e-9)
    np.testing.assert_allclose(got["bfloat16"], got["float32"], atol=0.05)


@pytest.mark.slow
def test_progress_counts_every_item(fitted, quick) -> None:
    student, _ = fitted
    seen: list[int] = []
    student.predict_proba(TEXTS, batch_size=16, progress=seen.append)
    assert sum(seen) == len(TEXTS) and len(seen) == 3
    _, fit_seen = quick
    assert sum(fit_seen) == 16 and len(fit_seen) == 2  # one epoch, batch_size 8


@pytest.mark.slow
def test_same_seed_same_probabilities(fitted) -> None:
    _, probs = fitted
    again = Student(**FAST).fit(TEXTS, LABELS, 2).predict_proba(TEXTS)
    np.testing.assert_array_equal(again, probs)


@pytest.mark.slow
def test_other_seed_other_probabilities(quick) -> None:
    probs, _ = quick
    data = (TEXTS[::5] + TEXTS[1::5], LABELS[::5] + LABELS[1::5])
    other = Student(**{**FAST, "epochs": 1, "seed": 1}).fit(*data, 2).predict_proba(TEXTS)
    assert not np.array_equal(other, probs)


@pytest.mark.slow
def test_save_load_roundtrip_identical(fitted, tmp_path) -> None:
    student, probs = fitted
    student.save(tmp_path / "student")
    assert (tmp_path / "student" / "adapter" / "adapter_config.json").is_file()
    loaded = Student.load(tmp_path / "student")
    np.testing.assert_array_equal(loaded.predict_proba(TEXTS), probs)
    assert loaded.get_params() == student.get_params()
    assert loaded.n_labels_ == 2


@pytest.mark.slow
def test_zero_weight_items_are_as_if_dropped(quick) -> None:
    probs, _ = quick
    kept_texts, kept_labels = TEXTS[::5] + TEXTS[1::5], LABELS[::5] + LABELS[1::5]
    noise = [f"Completely unrelated filler sentence number {i}." for i in range(6)]
    texts = kept_texts[:5] + noise + kept_texts[5:]
    labels = kept_labels[:5] + [1] * len(noise) + kept_labels[5:]
    weights = [1.0] * 5 + [0.0] * len(noise) + [1.0] * (len(kept_texts) - 5)
    got = Student(**{**FAST, "epochs": 1}).fit(texts, labels, 2, sample_weight=weights).predict_proba(TEXTS)
    np.testing.assert_array_equal(got, probs)


@pytest.mark.slow
def test_weights_steer_the_model(fitted) -> None:
    _, probs = fitted
    # Class 0 items weigh 20x more than class 1 items: the model should lean towards class 0.
    weights = [10.0 if y == 0 else 0.5 for y in LABELS]
    got = Student(**FAST).fit(TEXTS, LABELS, 2, sample_weight=weights).predict_proba(TEXTS)
    assert got[:, 0].mean() > probs[:, 0].mean() + 0.05


@pytest.mark.slow
def test_one_hot_or_nan_target_probs_train_as_the_labels_do(quick) -> None:
    probs, _ = quick
    texts, labels = TEXTS[::5] + TEXTS[1::5], LABELS[::5] + LABELS[1::5]
    one_hot = np.eye(2)[labels] * 3.0  # rows are normalized
    nan_rows = np.full((len(texts), 2), np.nan)
    for targets in (one_hot, nan_rows):
        got = Student(**{**FAST, "epochs": 1}).fit(texts, labels, 2, target_probs=targets).predict_proba(TEXTS)
        np.testing.assert_allclose(got, probs, atol=1e-5)


@pytest.mark.slow
def test_soft_targets_teach_the_model_their_uncertainty(fitted) -> None:
    _, hard = fitted
    soft_targets = np.where(np.eye(2)[LABELS] == 1, 0.7, 0.3)
    soft = Student(**FAST).fit(TEXTS, LABELS, 2, target_probs=soft_targets).predict_proba(TEXTS)
    y = np.array(LABELS)
    assert (soft.argmax(axis=1) == y).mean() >= 0.85  # still the right class ...
    confident_hard, confident_soft = hard[np.arange(len(y)), y].mean(), soft[np.arange(len(y)), y].mean()
    assert confident_soft < confident_hard - 0.05 and confident_soft < 0.85, (confident_soft, confident_hard)  # ... less sure


def test_contrastive_pairs_join_each_item_to_its_class_and_to_others() -> None:
    from imfl.student import _contrastive_pairs

    y = np.array([0, 0, 0, 1, 1, 2])
    anchor, partner, target = _contrastive_pairs(y, 24, np.random.default_rng(0))  # 6 items: 2 + 2 pairs each
    assert (anchor != partner).all()
    assert ((y[anchor] == y[partner]) == (target == 1)).all()
    # Two same-label and two other-label partners each; item 5 is alone in its class: no same-label partner.
    per_item = {i: (int(((anchor == i) & (target == 1)).sum()), int(((anchor == i) & (target == 0)).sum())) for i in range(6)}
    assert per_item == {0: (2, 2), 1: (2, 2), 2: (2, 2), 3: (2, 2), 4: (2, 2), 5: (0, 2)}
    # Fewer pairs than items: a random half of the pairs' count are anchors, once each.
    anchor, partner, target = _contrastive_pairs(y, 4, np.random.default_rng(0))
    assert len(set(anchor.tolist())) == 2 and (target == 0).sum() == 2 and len(anchor) in (3, 4)


@pytest.mark.slow
def test_a_contrastive_first_stage_keeps_the_task_learned_and_counts_its_work() -> None:
    seen: list[int] = []
    student = Student(**FAST, contrastive_pairs=40, contrastive_learning_rate=1e-4)
    probs = student.fit(TEXTS, LABELS, 2, progress=seen.append).predict_proba(TEXTS)
    assert (probs.argmax(axis=1) == np.array(LABELS)).mean() >= 0.85
    assert sum(seen) == student.fit_work(len(TEXTS)) == 4 * len(TEXTS) + 80


@pytest.mark.slow
def test_text_pairs_are_used() -> None:
    questions = ["Did the company do well?"] * len(TEXTS)
    student = Student(**{**FAST, "epochs": 1}).fit(questions, LABELS, 2, text_pairs=TEXTS)
    probs = student.predict_proba(questions[:4], text_pairs=TEXTS[:2] + TEXTS[-2:])
    assert probs.shape == (4, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    # Same question, different abstracts: the pair must reach the model.
    assert not np.allclose(probs[0], probs[-1])
    with pytest.raises(ModelError, match="text_pairs"):
        student.predict_proba(questions[:2])


@pytest.mark.slow
def test_one_class_only_is_fine() -> None:
    probs = Student(**{**FAST, "epochs": 1}).fit(TEXTS[:8], [2] * 8, 3).predict_proba(TEXTS[:3])
    assert probs.shape == (3, 3)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: Student(**FAST).fit([], [], 2), "zero items"),
        (lambda: Student(**FAST).fit(["a", "b"], [0, 2], 2), "out of range"),
        (lambda: Student(**FAST).fit(["a", "b"], [0, -1], 2), "out of range"),
        (lambda: Student(**FAST).fit(["a", "b"], ["pos", "neg"], 2), "integer class index"),
        (lambda: Student(**FAST).fit(["a", "b"], [0], 2), "one label per text"),
        (lambda: Student(**FAST).fit(["a", "b"], [0, 1], 1), "n_labels"),
        (lambda: Student(**FAST).fit("a text", [0], 2), "single string"),
        (lambda: Student(**FAST).fit(["a", "b"], [0, 1], 2, text_pairs=["x"]), "one pair per text"),
        (lambda: Student(**FAST).fit(["a", "b"], [0, 1], 2, sample_weight=[1.0, -1.0]), "sample_weight"),
        (lambda: Student(**FAST).fit(["a", "b"], [0, 1], 2, sample_weight=[0.0, 0.0]), "positive weight"),
        (lambda: Student(**FAST).fit(["a", "b"], [0, 1], 2, target_probs=[[1.0, 0.0]]), "target_probs has shape"),
        (lambda: Student(**FAST).fit(["a", "b"], [0, 1], 2, target_probs=[[1.0, 0.0], [0.5, -0.5]]), r"target_probs\[1\]"),
        (lambda: Student(**{**FAST, "epochs": 0}).fit(["a"], [0], 2), "epochs"),
        (lambda: Student(**{**FAST, "pooling": "max"}).fit(["a"], [0], 2), "pooling"),
        (lambda: Student("/no/such/model/dir", **FAST).fit(["a"], [0], 2), "does not exist"),
        (lambda: Student(**FAST).predict_proba(["a"]), "not trained"),
        (lambda: Student.load("/no/such/saved/student"), "no saved student"),
    ],
)
def test_bad_inputs_raise_model_error(call, message) -> None:
    with pytest.raises(ModelError, match=message):
        call()


def test_model_dir_without_config_is_a_model_error(tmp_path) -> None:
    with pytest.raises(ModelError, match="config.json"):
        Student(str(tmp_path), **FAST).fit(["a"], [0], 2)


@pytest.mark.slow
def test_any_local_encoder_directory_works(tmp_path) -> None:
    """A tiny random DistilBERT (another architecture, other LoRA target names) saved locally."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    from imfl.paths import bundled_encoder

    config = DistilBertConfig(vocab_size=30522, dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=64)
    DistilBertModel(config).save_pretrained(tmp_path / "tiny")
    AutoTokenizer.from_pretrained(str(bundled_encoder())).save_pretrained(tmp_path / "tiny")
    student = Student(str(tmp_path / "tiny"), **{**FAST, "epochs": 1}).fit(TEXTS[:8], LABELS[:8], 2)
    probs = student.predict_proba(TEXTS[:3])
    assert probs.shape == (3, 2)
    student.save(tmp_path / "saved")
    np.testing.assert_array_equal(Student.load(tmp_path / "saved").predict_proba(TEXTS[:3]), probs)


def test_sentence_transformers_dir_with_transformer_in_a_subfolder(tmp_path) -> None:
    from imfl.student import _resolve_model_dir

    (tmp_path / "0_Transformer").mkdir()
    (tmp_path / "0_Transformer" / "config.json").write_text("{}")
    modules = '[{"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"}]'
    (tmp_path / "modules.json").write_text(modules)
    assert _resolve_model_dir(str(tmp_path)) == tmp_path / "0_Transformer"
