"""Typed settings for a run: every default lives here, and every validation message is written here.

A run's configuration is a TOML file whose tables mirror the models below (``[data]``, ``[budget]``,
``[llm]``, ...). ``load_config`` reads it, applies ``--set key=value`` overrides and returns a
``RunConfig``; paths in the file are resolved relative to the file's own folder.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from imfl.errors import ConfigError


def near_duplicates(labels: Iterable[str]) -> list[list[str]]:
    """Groups of labels that are one label spelled differently (equal after strip and casefold), in the order given:
    as classes they would split one class in two, and only a confused LLM could tell them apart."""
    groups: dict[str, list[str]] = {}
    for label in labels:
        groups.setdefault(label.strip().casefold(), []).append(label)
    return [g for g in groups.values() if len(g) > 1]


class _Section(BaseModel):
    # Numbers and switches are Strict*: TOML and --set (read as TOML) give typed values, so `epochs = true` or
    # `total = 6.5` is a mistake to report, not a value to coerce (a whole number still fits a decimal setting).
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# A label's description goes into every LLM prompt: a sentence or two, not a manual (that is human.guidelines).
MAX_DESCRIPTION_CHARS = 500


class DataConfig(_Section):
    """Where the pool and the test set are, and which fields hold what."""

    pool: Path = Field(description="Unlabeled pool (JSONL, CSV or Parquet). Its label field, if any, is the simulated expert.")
    test: Path | None = Field(None, description="Held-out labeled file for evaluation after every round.")
    id_field: str = Field("id", description="Field with each row's unique id.")
    text_field: str = Field("text", description="Field with the text to classify.")
    text_pair_field: str | None = Field(
        None, description="Second input (e.g. a context); found automatically when the pool has a `text_pair` field."
    )
    label_field: str = Field("label", description="Field with the gold label (optional in the pool).")
    labels: list[str] = Field(default_factory=list, description="The label set; empty = the labels found in the data.")
    instruction: str = Field(
        "",
        description="What the LLM annotator is asked to do; empty = a generic classification instruction naming the labels.",
    )
    label_descriptions: dict[str, str] = Field(
        default_factory=dict,
        description='What each label means, a sentence or two per label (a table: `positive = "..."` under '
        "`[data.label_descriptions]`): shown beside the label's button on the annotation page and given to the LLM as a "
        "line `label: description`; labels left out are listed as before. Empty = the prompt is exactly as without it.",
    )
    pool_sample: StrictInt = Field(
        0, ge=0, description="Use only a random sample of this many pool rows (0 = all); the same sample for every seed."
    )
    test_sample: StrictInt = Field(
        0, ge=0, description="Evaluate on a random sample of this many test rows (0 = all); the same for every seed."
    )

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, v: list[str]) -> list[str]:
        if len(v) == 1:
            raise ValueError(
                f"data.labels lists one label ({v[0]!r}); a classifier needs at least two: list every label, "
                "or leave data.labels empty to take them from the data"
            )
        if len(set(v)) != len(v):
            raise ValueError(f"data.labels lists a label twice ({', '.join(v)}); list each label once")
        if variants := near_duplicates(v):
            raise ValueError(
                f"data.labels lists {'; '.join(', '.join(map(repr, g)) for g in variants)}, which differ only in "
                "case or spaces: list each label once, spelled as in the data"
            )
        return v

    @field_validator("label_descriptions")
    @classmethod
    def _check_descriptions(cls, v: dict[str, str]) -> dict[str, str]:
        for label, text in v.items():
            if not text.strip():
                raise ValueError(
                    f"data.label_descriptions gives label {label!r} an empty description: say in a sentence what the label "
                    "means, or leave the label out"
                )
            if len(text) > MAX_DESCRIPTION_CHARS:
                raise ValueError(
                    f"data.label_descriptions: the description of {label!r} has {len(text)} characters: keep it to one or "
                    f"two sentences (at most {MAX_DESCRIPTION_CHARS}); longer explanations belong in human.guidelines"
                )
        return v

    @model_validator(mode="after")
    def _descriptions_name_labels(self) -> DataConfig:
        if self.labels and (unknown := [label for label in self.label_descriptions if label not in self.labels]):
            raise ValueError(
                f"data.label_descriptions describes {unknown[0]!r}, which is not in data.labels "
                f"({', '.join(self.labels)}): spell it as in data.labels, or remove it"
            )
        return self


class BudgetConfig(_Section):
    """How many labels may be bought, from whom, and when."""

    total: StrictInt = Field(1000, description="Total annotations (human + LLM) over the whole run (ignored with budget.cost).")
    human: StrictInt = Field(200, description="How many of them go to human experts.")
    cost: StrictFloat | None = Field(
        None,
        gt=0,
        description="A budget in money instead of labels (human.cost and llm.cost per label): budget.human human "
        "labels as the schedule says, then LLM labels as far as the rest goes, up to the whole pool. Never overspent.",
    )
    rounds: StrictInt = Field(5, description="Number of query–annotate–train rounds.")
    schedule: Literal["geometric", "linear", "fixed"] = Field(
        "geometric", description="How the human batch shrinks from round to round (fixed = equal batches)."
    )
    decay: StrictFloat = Field(0.5, gt=0, le=1, description="Ratio between consecutive human batches for `geometric`.")
    order: Literal["human-first", "llm-first"] = Field(
        "human-first", description="Whether a round's human labels are collected before its LLM prompts are built."
    )


class QueryConfig(_Section):
    """Which items a round asks about."""

    acquisition: str = Field(
        "eeq",
        description="Acquisition function, which picks the items: eeq, random, uncertainty or diversity "
        "(query.strategy in earlier versions, a name still read).",
    )
    kmeans_iter: StrictInt = Field(100, ge=1, description="Maximum k-means iterations (eeq and diversity).")


class HumanConfig(_Section):
    annotator: str = Field(
        "oracle",
        description="Who plays the expert: `oracle` replays the pool's gold labels; `people` waits for real experts "
        "(imfl serve, imfl annotate, imfl import-labels).",
    )
    cost: StrictFloat = Field(1.0, ge=0, description="Cost of one human label (any unit; used in reports).")
    token: SecretStr | None = Field(
        None,
        description="people: the shared access token of the web page, for one expert while nobody is registered with "
        "`imfl people add` (better: the variable named by token_env; empty = a new random token printed at start). "
        "Never written out.",
    )
    token_env: str = Field(
        "IMFL_TOKEN", description="people: the environment variable holding the web page's shared access token."
    )
    lease_seconds: StrictInt = Field(
        600, ge=5, description="people: how long an item handed to one person is kept from the others."
    )
    show_guesses: StrictBool = Field(
        False, description="people: show the student's current guess on the page (it can anchor experts)."
    )
    review_cost: StrictFloat = Field(
        0.25,
        ge=0,
        description="people: cost of reviewing one LLM label on the page's Review tab (unit of human.cost; a correction "
        "becomes a human label at this cost, a confirmation costs it too).",
    )
    overlap: StrictFloat = Field(
        0.0,
        ge=0,
        le=1,
        description="people: the share of each round's human items (a seeded choice) that two different people label; "
        "the round completes when both answered and an admin settled any disagreement (the Adjudicate tab). Each answer "
        "counts as one human label of the budget and costs human.cost, so overlap buys fewer distinct items.",
    )
    guidelines: Path | None = Field(
        None,
        description="people: a Markdown file of labeling guidelines, shown on the annotation page (rendered without raw "
        "HTML; links only http, https and mailto); read when imfl serve starts.",
    )


class LLMConfig(_Section):
    annotator: str = Field(
        "local",
        description="local (a transformers causal LM), openai (any OpenAI-compatible endpoint), recorded (a column of "
        "labels) or simulated (the gold label, wrong with probability 1 - llm.accuracy: for experiments only).",
    )
    accuracy: StrictFloat | None = Field(
        None, gt=0, le=1, description="simulated: how often a label is right; a wrong one is any other label, equally likely."
    )
    model: str | None = Field(
        None, description="local: a Hugging Face model dir (empty = the bundled SmolLM2-135M-Instruct); openai: the model name."
    )
    column: str | None = Field(None, description="recorded: the pool field holding the recorded LLM labels.")
    file: Path | None = Field(
        None, description="recorded: a JSONL/CSV file of recorded answers instead (id, label, optional probs {label: p})."
    )
    k: StrictInt = Field(4, ge=0, description="Number of demonstrations in each prompt.")
    demos: Literal["retrieved", "random", "none"] = Field(
        "retrieved", description="retrieved = the k most similar human-labeled items; random = k random ones."
    )
    balanced: StrictBool = Field(
        False, description="Retrieved demos include the most similar item of each label first (as k allows)."
    )
    calibrate: StrictBool = Field(
        False, description="Contextual calibration: divide by the probabilities of a content-free input."
    )
    max_length: StrictInt = Field(2048, ge=64, description="local: longest prompt in tokens; demos are dropped to fit.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="local: precision of the model; auto = bfloat16 where the CPU has it natively (1.5x faster), else float32.",
    )
    cost: StrictFloat = Field(0.0, ge=0, description="Fixed cost of one LLM label (any unit), added to the token prices.")
    prompt_price: StrictFloat = Field(0.0, ge=0, description="Price per 1,000,000 prompt tokens (same unit as human.cost).")
    completion_price: StrictFloat = Field(0.0, ge=0, description="Price per 1,000,000 completion tokens.")
    cache: StrictBool = Field(True, description="Keep every answer in the cache dir, so no prompt is ever paid twice.")
    eval_sample: StrictInt = Field(
        0,
        ge=0,
        description="Each round the LLM also labels up to this many human-labeled items it has not labeled before "
        "(leave-one-out demos): its accuracy, confusion and calibration on this task (the [fidelity] switches need it).",
    )
    relabel: StrictInt = Field(
        0,
        ge=0,
        description="From round 2 on, up to this many of the LLM's earlier labels that the previous round's student "
        "finds least likely (its highest losses) go back to the LLM, its demonstrations drawn from the human labels and "
        "the other LLM labels the student agrees with (FreeAL's collaboration); the new answer replaces the old one, and "
        "each counts as an LLM label in the budget. Live LLMs only (local, openai); 0 = off.",
    )
    on_failure: Literal["requeue", "human"] = Field(
        "requeue",
        description="An item whose LLM call failed goes back to the pool (requeue) or to the next round's human batch (human).",
    )
    # openai backend
    base_url: str | None = Field(
        None, description="openai: the endpoint, e.g. http://127.0.0.1:8000/v1 or https://api.openai.com/v1."
    )
    endpoint: Literal["chat", "completions"] = Field(
        "chat", description="openai: /v1/chat/completions (chat models), or /v1/completions with the prompt as plain text."
    )
    api_key: SecretStr | None = Field(
        None, description="openai: the API key (better: set the variable named by api_key_env). Never written out."
    )
    api_key_env: str = Field("OPENAI_API_KEY", description="openai: the environment variable holding the API key.")
    max_concurrency: StrictInt = Field(4, ge=1, description="openai: requests in flight at once.")
    logprobs: StrictBool = Field(
        True, description="openai: ask for token log-probabilities (the cheapest way to label probabilities)."
    )
    samples: StrictInt = Field(
        5, ge=0, description="openai: sampled answers for self-consistency when log-probabilities are missing."
    )
    temperature: StrictFloat = Field(0.7, ge=0, description="openai: sampling temperature of the self-consistency samples.")
    max_tokens: StrictInt = Field(16, ge=1, description="openai: longest answer.")
    timeout: StrictFloat = Field(60.0, gt=0, description="openai: seconds before a request is given up (then retried).")
    max_retries: StrictInt = Field(4, ge=0, description="openai: retries of a failed request, with exponential backoff.")


class StudentConfig(_Section):
    """The small model trained every round (defaults tuned on splits of the FPB pool; see student.py)."""

    model: str | None = Field(None, description="Local encoder dir; empty = the bundled all-MiniLM-L6-v2.")
    epochs: StrictInt = Field(4, ge=1, description="Passes over the labels (more for small sets, see min_steps).")
    min_steps: StrictInt = Field(
        100, ge=0, description="Small label sets get whole extra epochs until this many optimizer steps."
    )
    learning_rate: StrictFloat = Field(1e-3, gt=0, description="AdamW step size of the LoRA matrices.")
    head_learning_rate: StrictFloat = Field(1e-2, gt=0, description="Step size of the classification head.")
    batch_size: StrictInt = Field(16, ge=1, description="Labels per optimizer step.")
    max_length: StrictInt = Field(128, ge=8, description="Tokens per input (text and text_pair together).")
    lora_r: StrictInt = Field(8, ge=1, description="Rank of the LoRA adapters.")
    lora_alpha: StrictInt = Field(16, ge=1, description="LoRA scaling (alpha / r multiplies the adapter's output).")
    lora_target_modules: str | list[str] = Field("all-linear", description="Which layers get LoRA adapters.")
    predict_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Precision of predictions; auto = bfloat16 autocast where the CPU has it natively, else float32."
    )
    train_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Precision of the training forward pass (as predict_dtype; weights stay float32)."
    )
    num_threads: StrictInt | None = Field(
        None, ge=1, description="CPU threads for training and prediction; empty = torch's default."
    )
    soft_targets: StrictBool = Field(
        False,
        description="LLM labels train towards the LLM's label probabilities (distillation) instead of its top label; "
        "labels without probabilities (recorded, simulated annotators) stay hard.",
    )
    contrastive_pairs: StrictInt = Field(
        0,
        ge=0,
        description="SetFit-style first stage: this many pairs of labeled items (half same label, half other) pull "
        "same-label embeddings together before the classifier trains; 0 = off (on FPB: +0.6 points for 5x the training time).",
    )
    contrastive_learning_rate: StrictFloat = Field(5e-5, gt=0, description="Step size of the contrastive stage.")
    weights: dict[str, StrictFloat] = Field(
        default_factory=lambda: {"human": 1.0, "llm": 1.0},
        description="Training weight of each label source; a source not named keeps 1.0.",
    )

    @field_validator("weights")
    @classmethod
    def _fill_weights(cls, v: dict[str, float]) -> dict[str, float]:
        return {"human": 1.0, "llm": 1.0} | v


class FidelityConfig(_Section):
    """Fidelity-aware IMFL (beyond the paper; see fidelity.py): act on how good the LLM measures on this task.
    Every switch needs llm.eval_sample > 0."""

    weighting: StrictBool = Field(
        False, description="LLM labels train with weight = their calibrated probability of being right."
    )
    routing: StrictBool = Field(
        False, description="LLM labels whose calibrated probability of being right is below route_threshold are not trained on."
    )
    route_threshold: StrictFloat | None = Field(
        None,
        ge=0,
        le=1,
        description="routing: the threshold; empty = the student's estimated accuracy (out-of-fold on human labels).",
    )
    route_to_human: StrictBool = Field(
        False, description="routing: the round's routed items go to the next round's human batch first."
    )
    filter: StrictBool = Field(False, description="cleanlab's find_label_issues drops likely-wrong LLM labels before training.")
    adaptive: StrictBool = Field(
        False,
        description="While the LLM's estimated accuracy is below the student's, buy no LLM labels (each decision is logged).",
    )
    human_max: StrictInt | None = Field(
        None,
        ge=0,
        description="adaptive: LLM labels not bought become human labels up to this many in total; empty = budget.human.",
    )
    small_loss: StrictBool = Field(
        False,
        description="A student trained one epoch on every label scores the LLM's; the share with the highest loss "
        "(small_loss_share) is not trained on (networks fit clean labels before noisy ones).",
    )
    small_loss_share: StrictFloat | None = Field(
        None, ge=0, lt=1, description="small_loss: the share of LLM labels dropped; empty = the LLM's measured error rate."
    )

    @property
    def active(self) -> bool:
        return self.weighting or self.routing or self.filter or self.adaptive or self.small_loss


class SelfTrainingConfig(_Section):
    """Self-training (beyond the paper; see pseudo.py): from round 2 on, the student also learns from the previous
    round's most confident predictions on unlabeled pool items, at no annotation cost."""

    items: StrictInt = Field(0, ge=0, description="Pseudo-labeled pool items added to each round's training (0 = off).")
    mode: Literal["proportional", "balanced"] = Field(
        "proportional", description="How they are spread over the predicted classes: as often as each is predicted, or equally."
    )
    weight: StrictFloat = Field(
        1.0, gt=0, description="Training weight of a pseudo-labeled item (a human label weighs student.weights.human)."
    )


class EmbeddingsConfig(_Section):
    model: str | None = Field(None, description="Sentence-transformers dir; empty = the bundled all-MiniLM-L6-v2.")
    batch_size: StrictInt = Field(64, ge=1, description="Texts per embedding batch.")
    num_threads: StrictInt | None = Field(
        None,
        ge=1,
        description="CPU threads for embedding; empty = torch's default. With student.num_threads = 1 a run repeats "
        "the benchmark grid's cells (one thread each) exactly on the same kind of processor.",
    )


class RayConfig(_Section):
    """Where and how wide pool-sized work runs when ``engine = "ray"`` (see imfl.engine)."""

    address: str | None = Field(
        None, description="Ray cluster to join (e.g. ray://head:10001); empty = $RAY_ADDRESS, else a Ray started on this machine."
    )
    actors: StrictInt = Field(
        2, ge=1, description="Actors embedding and predicting the pool; each loads the model once per pass."
    )
    cpus_per_actor: StrictFloat = Field(1.0, gt=0, description="CPUs Ray reserves for each of those actors.")
    batch_size: StrictInt = Field(256, ge=1, description="Pool items per Ray batch when embedding and predicting.")
    llm_actors: StrictInt = Field(
        2,
        ge=1,
        description="Actors scoring LLM prompts; an HTTP endpoint sees at most llm_actors x llm.max_concurrency calls at once.",
    )
    llm_cpus_per_actor: StrictFloat = Field(
        1.0, gt=0, description="CPUs per LLM actor: 1 or more for llm.annotator = 'local', e.g. 0.1 for an HTTP endpoint."
    )
    llm_batch_size: StrictInt = Field(8, ge=1, description="Prompts per Ray batch.")


class RunConfig(_Section):
    """The whole run. ``strategy`` is a preset that fills in the other sections (see ``STRATEGIES``)."""

    name: str = Field("run", description="Run folder name under output_dir.")
    seed: StrictInt = Field(0, description="Seeds the query, k-means, demo sampling and the student: same seed, same run.")
    strategy: str = Field(
        "fidelity",
        description="fidelity (the default: IMFL that measures its LLM every round and buys, weights, routes and "
        "filters LLM labels by what it measured; best in our benchmarks), imfl (the paper's method as published), random, "
        "uncertainty, diversity, human-only, llm-only or label-all (budget.human random items to people, the LLM labels the "
        "rest the budget buys, one round: the plain baseline).",
    )
    compare_human_only: StrictBool = Field(
        True,
        description="At the end of a run with a test file and LLM labels (or pseudo-labels), train one more student on the "
        "run's human labels alone and set it beside the final student: what the LLM labels bought (metrics.json: human_only).",
    )
    output_dir: Path = Field(Path("runs"), description="Runs are written to output_dir/name/.")
    cache_dir: Path | None = Field(None, description="Embedding and model cache; empty = $IMFL_CACHE or ~/.cache/imfl.")
    data: DataConfig
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    query: QueryConfig = Field(default_factory=QueryConfig)
    human: HumanConfig = Field(default_factory=HumanConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    fidelity: FidelityConfig = Field(default_factory=FidelityConfig)
    self_training: SelfTrainingConfig = Field(default_factory=SelfTrainingConfig)
    embeddings: EmbeddingsConfig = Field(default_factory=EmbeddingsConfig)
    engine: Literal["local", "ray"] = Field(
        "local", description="Where pool-sized work runs: 'local' (this process) or 'ray' (Ray Data actors, see [ray])."
    )
    ray: RayConfig = Field(default_factory=RayConfig)

    @property
    def run_dir(self) -> Path:
        """Where the run's store and outputs live: output_dir/name."""
        return Path(self.output_dir) / self.name

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        b = self.budget
        if b.rounds < 1:
            raise ValueError(f"budget.rounds is {b.rounds}: a run needs at least 1 round")
        if b.cost is not None:
            self._check_money(b.cost)
        elif b.total < 1:
            raise ValueError(f"budget.total is {b.total}: give a positive number of annotations")
        elif not 0 <= b.human <= b.total:
            raise ValueError(f"budget.human is {b.human}: it must be between 0 and budget.total ({b.total})")
        elif b.total < b.rounds:
            raise ValueError(f"budget.total ({b.total}) is smaller than budget.rounds ({b.rounds}): each round needs a label")
        if self.llm.annotator == "recorded" and not (self.llm.column or self.llm.file):
            raise ValueError(
                "llm.annotator is 'recorded' but llm.column and llm.file are empty: name the pool field with the "
                "LLM labels, or a file of recorded answers"
            )
        if self.llm.annotator == "simulated" and self.llm.accuracy is None:
            raise ValueError(
                "llm.annotator is 'simulated' but llm.accuracy is empty: say how often its labels are right, e.g. 0.7"
            )
        if self.llm.relabel and self.llm.annotator in ("recorded", "simulated"):
            raise ValueError(
                f"llm.relabel is {self.llm.relabel} but llm.annotator is {self.llm.annotator!r}: relabeling needs a live "
                "LLM (local or openai), since a recorded one repeats its answer and a simulated one redraws it blindly; "
                "set llm.relabel = 0"
            )
        if self.fidelity.active and self.llm.eval_sample == 0:
            raise ValueError("the [fidelity] switches need the LLM measured every round: set llm.eval_sample, e.g. 50")
        if self.fidelity.human_max is not None and self.fidelity.human_max < b.human:
            raise ValueError(
                f"fidelity.human_max ({self.fidelity.human_max}) is below budget.human ({b.human}): "
                "it caps the human labels, so give at least budget.human"
            )
        if self.llm.annotator == "openai" and not (self.llm.base_url and self.llm.model):
            raise ValueError("llm.annotator is 'openai': set llm.base_url (e.g. http://127.0.0.1:8000/v1) and llm.model")
        if bad := set(self.student.weights) - {"human", "llm"}:
            raise ValueError(f"student.weights has unknown source {sorted(bad)[0]!r}: use 'human' and 'llm'")
        return self

    def _check_money(self, cost: float) -> None:
        b, human_money = self.budget, self.budget.human * self.human.cost
        if b.human < 0:
            raise ValueError(f"budget.human is {b.human}: give 0 or more human labels")
        if human_money > cost:
            raise ValueError(
                f"budget.cost ({cost:g}) does not pay for budget.human ({b.human}) × human.cost ({self.human.cost:g}) "
                f"= {human_money:g}: raise budget.cost or lower budget.human"
            )
        if self.llm.prompt_price or self.llm.completion_price:
            raise ValueError(
                "budget.cost needs a fixed price per LLM answer, but llm.prompt_price or llm.completion_price is set "
                "(a token's price is known only after the call): set llm.cost to the price of one answer instead"
            )
        if self.fidelity.human_max is not None and self.fidelity.human_max > b.human:
            raise ValueError(
                f"fidelity.human_max ({self.fidelity.human_max}) is above budget.human ({b.human}), but with "
                "budget.cost the human labels are fixed by budget.human: raise budget.human instead"
            )


# Named strategies: each is a set of overrides on top of the user's configuration, applied once by
# ``resolve_strategy``. Adding a strategy is one line here.
# A value may be a function of the user's configuration.
STRATEGIES: dict[str, dict[str, Any]] = {
    "imfl": {"query.acquisition": "eeq"},
    "random": {"query.acquisition": "random"},
    "uncertainty": {"query.acquisition": "uncertainty"},
    "diversity": {"query.acquisition": "diversity"},
    # with budget.cost: as many human labels as the money pays, and no LLM label with what is left over
    "human-only": {
        "budget.total": lambda cfg: _human_only_labels(cfg),
        "budget.human": lambda cfg: _human_only_labels(cfg),
        "budget.cost": None,
    },
    "llm-only": {"budget.human": 0},
    # the baseline a practitioner tries first: budget.human random items to people, the LLM labels as many others as the
    # budget buys (with budget.cost: up to the whole pool), one training; no query, no rounds
    "label-all": {"query.acquisition": "random", "budget.rounds": 1},
    # every [fidelity] switch on, except those the configuration sets itself (an ablation turns one off)
    "fidelity": {"query.acquisition": "eeq", "llm.eval_sample": lambda cfg: cfg.llm.eval_sample or 50}
    | {
        f"fidelity.{k}": (lambda cfg, k=k: getattr(cfg.fidelity, k) if k in cfg.fidelity.model_fields_set else True)
        for k in ("weighting", "routing", "filter", "adaptive")
    },
}


def _human_only_labels(cfg: RunConfig) -> int:
    b = cfg.budget
    if b.cost is None or cfg.human.cost == 0:
        return b.total
    return int(b.cost // cfg.human.cost)


def resolve_strategy(cfg: RunConfig) -> RunConfig:
    """Apply the named strategy's preset and return a new config (the input is not changed)."""
    if cfg.strategy not in STRATEGIES:
        raise ConfigError(f"strategy {cfg.strategy!r} is unknown: use one of {', '.join(STRATEGIES)}")
    data = cfg.model_dump()
    for key, value in STRATEGIES[cfg.strategy].items():
        if callable(value):
            value = value(cfg)
        set_path(data, key, value)
    return _validate(data, source="strategy preset")


def set_path(data: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {part!r} is a value, not a section")
    node[leaf] = value


def parse_override(item: str) -> tuple[str, Any]:
    """Parse ``key.sub=value``; the value is read as TOML (numbers, booleans, lists), else as a string."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: write it as key=value, e.g. --set budget.total=500")
    key, raw = item.split("=", 1)
    key, raw = key.strip(), raw.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: the key before '=' is empty")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


# Settings renamed since they were first written, old name -> new name. Configuration files, run folders and
# benchmark cells written under an old name still load (and compare equal in ``settings_difference``).
RENAMED_SETTINGS = {"query.strategy": "query.acquisition"}


def upgrade_settings(data: dict, source: str = "config") -> dict:
    """``data`` (nested settings) with renamed settings under their new names; the input is not changed. Both names
    at once is an error, since they could disagree."""
    import copy

    data = copy.deepcopy(data)
    for old, new in RENAMED_SETTINGS.items():
        (section, old_key), new_key = old.split("."), new.split(".")[1]
        part = data.get(section)
        if not isinstance(part, dict) or old_key not in part:
            continue
        if new_key in part:
            raise ConfigError(f"{source}: {old} and {new} are both set; {old} is the old name of {new}: keep only {new}")
        part[new_key] = part.pop(old_key)
    return data


def _validate(data: dict, source: str) -> RunConfig:
    try:
        return RunConfig.model_validate(upgrade_settings(data, source))
    except ValidationError as exc:
        if unknown := sorted(".".join(map(str, e["loc"])) for e in exc.errors() if e["type"] == "extra_forbidden"):
            verb = "is not a known setting" if len(unknown) == 1 else "are not known settings"
            raise ConfigError(
                f"{source}: {', '.join(unknown)} {verb} (check the spelling; see the README's configuration reference)"
            ) from None
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "is required"
        elif "input" in err and err["type"] != "value_error":
            msg = f"{msg} (got {err['input']!r})"
        raise ConfigError(f"{source}: {where} {msg}" if err["type"] != "value_error" else f"{source}: {msg}") from None


def config_from_dict(
    data: dict, overrides: Sequence[str] = (), base_dir: Path | None = None, source: str = "config"
) -> RunConfig:
    """Build a validated config from a plain dict plus ``key=value`` overrides; relative paths are
    resolved against ``base_dir``."""
    import copy

    data = copy.deepcopy(data)
    for item in overrides:
        key, value = parse_override(item)
        set_path(data, key, value)
    cfg = _validate(data, source)
    if base_dir is not None:
        cfg = _resolve_paths(cfg, base_dir)
    if cfg.human.guidelines is not None and not cfg.human.guidelines.is_file():
        raise ConfigError(
            f"{source}: human.guidelines {cfg.human.guidelines} is not a file: give the path of a Markdown file "
            "(relative to the config file), or remove the setting"
        )
    return cfg


def read_toml(
    path: Path, what: str = "config file", hint: str = "pass the path of a TOML file (see configs/ for examples)"
) -> dict:
    """The tables of a TOML file, or a ConfigError naming the file and what is wrong with it."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found; {hint}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8-sig"))  # a byte order mark (Windows editors) is fine
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        from imfl.io import not_utf8

        raise ConfigError(not_utf8(path)) from None


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> RunConfig:
    """Read a TOML config file; relative paths inside it are relative to the file's folder."""
    path = Path(path)
    return config_from_dict(read_toml(path), overrides, base_dir=path.parent.resolve(), source=str(path))


def _resolve_paths(cfg: RunConfig, base: Path) -> RunConfig:
    def fix_path(p: Path) -> Path:
        return p if p.is_absolute() else (base / p)

    def fix(p: Path | None) -> Path | None:
        return None if p is None else fix_path(p)

    data = cfg.model_copy(deep=True)
    data.data.pool = fix_path(cfg.data.pool)
    data.data.test = fix(cfg.data.test)
    data.output_dir = fix_path(cfg.output_dir)
    data.cache_dir = fix(cfg.cache_dir)
    data.llm.file = fix(cfg.llm.file)
    data.human.guidelines = fix(cfg.human.guidelines)
    return data


# Settings that change where the work runs or what is measured after the last round, never the rounds' labels and
# students beyond the last bits of a float: a run may be continued under another engine or thread count, or with the
# human-only comparison switched.
EXECUTION_SETTINGS = ("engine", "ray", "compare_human_only", "student.num_threads", "embeddings.num_threads")
# Settings that change only what the annotation page shows: guidelines may be added or moved while a project runs.
DISPLAY_SETTINGS = ("human.guidelines",)


def settings_difference(old: dict, new: dict, prefix: str = "") -> str | None:
    """The first setting on which two dumped configurations differ, as "key: old then, new now"; None if they
    agree. A setting added to imfl since ``old`` was written counts as agreeing while ``new`` keeps its default,
    so results and stores stay valid across versions that only add options."""
    defaults = _defaults()
    if not prefix:
        old, new = upgrade_settings(old), upgrade_settings(new)
    for key in sorted(set(old) | set(new)):
        if f"{prefix}{key}" in EXECUTION_SETTINGS + DISPLAY_SETTINGS:
            continue
        a, b = old.get(key), new.get(key)
        if key not in old and _default_at(defaults, f"{prefix}{key}") == b:
            continue
        if key not in old and isinstance(b, dict):
            a = {}  # a section added since: each of its settings must be at its default
        if isinstance(a, dict) and isinstance(b, dict):
            if found := settings_difference(a, b, f"{prefix}{key}."):
                return found
        elif a != b:
            return f"{prefix}{key}: {a!r} then, {b!r} now"
    return None


def _defaults() -> dict:
    return RunConfig(data=DataConfig(pool=Path("-"))).model_dump(mode="json")


def _default_at(defaults: dict, dotted: str) -> Any:
    node: Any = defaults
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return object()  # no default: never equal
        node = node[part]
    return node


def config_to_toml(cfg: RunConfig) -> str:
    """Write a config back as TOML (the run's record of what it used)."""
    data = cfg.model_dump(mode="json", exclude_none=True)
    data["llm"].pop("api_key", None)  # secrets never leave memory
    data["human"].pop("token", None)
    return _dump_toml(data)


def _toml_value(v: Any) -> str:
    import json

    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def _dump_toml(data: dict) -> str:
    lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines.extend(f"{kk} = {_toml_value(vv)}" for kk, vv in v.items())
    return "\n".join(lines) + "\n"


def reference_table() -> str:
    """The README's configuration reference: every setting, its default and its description."""
    from pydantic_core import PydanticUndefined

    def rows(model: type[BaseModel], prefix: str):
        for key, field in model.model_fields.items():
            sub = field.annotation
            if isinstance(sub, type) and issubclass(sub, _Section):
                yield from rows(sub, f"{prefix}{key}.")
                continue
            if field.default is PydanticUndefined and field.default_factory is None:
                default = "required"
            else:
                value = field.get_default(call_default_factory=True)
                default = "" if value is None else "`" + ('""' if value == "" else str(value)) + "`"
            yield f"| `{prefix}{key}` | {default} | {field.description or ''} |"

    return "\n".join(["| setting | default | meaning |", "|---|---|---|", *rows(RunConfig, "")])
