"""The LLM annotator around the real bundled model: contextual calibration and the leave-one-out
self-check."""

import numpy as np
import pytest

from imfl.annotators import AnnotationContext, LLMAnnotator
from imfl.data import Example, Task
from imfl.llm.local import LocalBackend
from imfl.llm.prompts import build_messages

# slow: the bundled LLM.
pytestmark = pytest.mark.slow

TASK = Task(("neutral", "positive", "negative"), "Classify the sentiment of the financial news sentence.")
HUMAN = [
    (Example("h1", "Net sales fell sharply in the quarter ."), "negative"),
    (Example("h2", "Operating profit doubled to EUR 4 million ."), "positive"),
    (Example("h3", "The company is based in Helsinki ."), "neutral"),
    (Example("h4", "The order is worth EUR 1 million ."), "neutral"),
    (Example("h5", "Losses widened to EUR 3 million ."), "negative"),
]
ITEMS = [Example("a", "Profit rose 5 % from a year earlier ."), Example("b", "Shares were unchanged at EUR 2 .")]


@pytest.fixture(scope="module")
def backend(imfl_cache):
    return LocalBackend(cache_dir=str(imfl_cache), max_length=512)


def test_contextual_calibration_divides_by_the_content_free_probabilities(backend):
    context = AnnotationContext(1, HUMAN, seed=7)
    raw = LLMAnnotator(backend, TASK, k=2, demos="random").annotate(ITEMS, context)
    calibrated_annotator = LLMAnnotator(backend, TASK, k=2, demos="random", calibrate=True)
    calibrated = calibrated_annotator.annotate(ITEMS, context)
    prompts = calibrated_annotator.prompts(ITEMS, context)
    content_free = [build_messages(TASK.instruction, TASK.labels, "N/A", None, demos) for _, demos in prompts]
    base = np.exp(backend.score(content_free, TASK.labels))
    for r, c, b in zip(raw, calibrated, base):
        assert r.demo_ids == c.demo_ids and r.prompt_hash == c.prompt_hash  # same prompt, only the probabilities differ
        p = np.array([r.probs[label] for label in TASK.labels])
        q = np.array([c.probs[label] for label in TASK.labels])
        expected = (p / b) / (p / b).sum()
        np.testing.assert_allclose(q, expected, rtol=1e-6)
        assert c.label == TASK.labels[int(expected.argmax())] and c.confidence == pytest.approx(expected.max())
    assert not np.allclose(base, 1 / 3, atol=0.02)  # the content-free input is not uniform, so calibration changed something


def test_self_check_never_shows_an_item_its_own_label(backend):
    annotator = LLMAnnotator(backend, TASK, k=4, demos="random")
    pick = [0, 2, 4]
    context = AnnotationContext(1, HUMAN, seed=3, exclude=pick)
    prompts = annotator.prompts([HUMAN[i][0] for i in pick], context)
    for i, (_, demos) in zip(pick, prompts):
        ids = [d.id for d in demos]
        assert len(ids) == 4 and HUMAN[i][0].id not in ids
    answers = annotator.annotate([HUMAN[i][0] for i in pick], context)
    assert [a.demo_ids for a in answers] == [tuple(d.id for d in demos) for _, demos in prompts]
