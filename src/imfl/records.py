"""The typed records a run writes: one ``RoundMetrics`` per evaluated round (``metrics.json``, ``metrics.csv``, the
store, ``RunResult.metrics``) and, in the last round, the ``HumanOnly`` comparison.

They are ``TypedDict``s: at run time plain dicts, so they go to JSON and back unchanged and older run folders read as
before; for the type checker and the reader, every key with its type and meaning in one place. A key is present only
when the run did what it measures (a self-check, a review, a test file, ...).
"""

from __future__ import annotations

from typing import Any, TypedDict


class HumanOnly(TypedDict, total=False):
    """What the LLM labels bought (``compare_human_only``): the final student beside one trained the same way on the
    run's human labels alone, both on the test file."""

    human_labels: int
    """The human labels both students learned from."""
    llm_labels: int
    """The LLM labels only the final student learned from."""
    test_accuracy: float
    """The human-only student's."""
    test_macro_f1: float
    gain_accuracy: float
    """Final student minus human-only student."""
    gain_macro_f1: float
    summary: str
    """The one line the run printed."""


class RoundMetrics(TypedDict, total=False):
    """One evaluated round."""

    round: int
    # labels bought this round and over the run so far
    human_labels: int
    llm_labels: int
    llm_failed: int
    """LLM calls that failed (network, refusal)."""
    llm_unparsed: int
    """LLM answers that named no label."""
    human_total: int
    llm_total: int
    human_cost: float
    """In human.cost's unit."""
    llm_cost: float
    human_cost_total: float
    llm_cost_total: float
    """Every LLM answer, failed ones too."""
    llm_prompt_tokens: int
    llm_completion_tokens: int
    llm_calls: int
    """Fresh calls of a live LLM (the rest came from its answer cache)."""
    llm_cached: int
    llm_accuracy: float | None
    """The LLM's labels against the pool's gold labels, where the pool has them."""
    # the previous round's student on this round's new human labels, before training on them (from round 2)
    prequential_n: int
    prequential_accuracy: float | None
    # the fidelity self-check (llm.eval_sample): fidelity.Policy.metrics
    llm_self_n: int
    llm_self_accuracy: float | None
    llm_self_ece: float | None
    llm_self_reviews: int
    """Of llm_self_n, people's reviews of LLM labels."""
    llm_probe_cost: float
    student_est_n: int
    student_est_accuracy: float | None
    fidelity: dict[str, Any]
    """Both estimates, confusion matrices as non-zero [gold, predicted, count] triples."""
    buy_llm: bool
    """The adaptive human share's decision (fidelity.adaptive)"""
    human_moved: int
    decision: str
    # what the fidelity switches did to the LLM's labels before training: fidelity.Policy.weights
    route_threshold: float
    llm_routed: int
    llm_filtered: int
    llm_filtered_wrong: int | None
    """Of those, wrong by the pool's gold labels (None without them)"""
    llm_small_loss: int
    llm_small_loss_wrong: int | None
    llm_weight_mean: float
    llm_soft_targets: int
    """LLM labels trained towards their probabilities (student.soft_targets)"""
    # llm.relabel: the LLM's answers again for labels the student doubts
    llm_relabeled: int
    llm_relabel_changed: int
    llm_relabel_right_before: int
    llm_relabel_right_after: int
    # self_training: the previous round's confident predictions, no annotation
    pseudo_labels: int
    pseudo_accuracy: float | None
    # people: reviews of LLM labels and agreement between two people on the same items (human.overlap)
    reviews_confirmed: int
    reviews_corrected: int
    review_cost: float
    agreement: dict[str, Any]
    """Imfl.agreement.agreement of this round's answers, with "overall" for the run's."""
    # the student of this round on the test file
    test_accuracy: float
    test_macro_f1: float
    test_kappa: float
    """Cohen's kappa: accuracy above the chance of answering at random with the student's own label shares, as a share
    of the room above it (0: the student guesses, e.g. gives one label to everything)."""
    test_answered: dict[str, float]
    """Per label, the share of the test items the student gives it (metrics.json only, not metrics.csv)."""
    seconds: dict[str, float]
    """Per phase: select, human, llm, llm_self_eval, train, evaluate."""
    human_only: HumanOnly
    """Last round only."""
