"""Export a trained student as a standard Hugging Face model directory that loads without imfl:

    from transformers import pipeline
    classify = pipeline("text-classification", model="DIR")

The directory holds a stock ``BertForSequenceClassification`` (config.json with ``id2label``/``label2id``,
model.safetensors with the LoRA adapter merged into the weights, the tokenizer) and a model card
(README.md) that says what the model was trained on, by whom, at what cost and how well it did.

Why a stock class can carry the student. The student classifies the *mean* of the encoder's last hidden
states (masked mean pooling: measured best for all-MiniLM, see student.py), while
``BertForSequenceClassification`` reads only the first token, through ``tanh(dense(.))``. The export adds
one encoder layer whose weights make the first token's output hold the student's logits, scaled:

- attention: queries and keys zero, so every token attends to every unmasked token with the same weight;
  values the identity, so the first token receives exactly the masked mean ``m``;
- attention output: ``S * W m`` in the first ``n`` coordinates (``W`` the student's head), ``+K`` and
  ``-K`` in two others, 0 in a reference coordinate. The residual adds the first token's own hidden state
  ``h`` (order 1) everywhere; with ``S = 1e6`` it moves the logits by about ``1e-6``. The layer norm that
  follows divides by the standard deviation, which ``K`` (``1e13``) fixes to ``K * sqrt(2 / hidden)``
  whatever the logits are, so the division is a known constant;
- the feed-forward part is zero and its layer norm leaves an already normalised vector as it is;
- the pooler takes each logit coordinate minus the reference coordinate (which cancels the rounding of
  the layer norms' means), at a scale where ``tanh`` is the identity to float32 precision, and the
  classifier multiplies by the known constant and adds the head's bias.

Measured on FPB test sentences (tests/test_export.py, BENCHMARKS.md): the same label for every sentence,
probabilities within 1e-5 of the student's in float32. The constants need float32 (or bfloat16's range):
the model must not be loaded in float16. A student with ``pooling="cls"`` needs no extra layer, and one
with ``pooling="pooler"`` is ``BertForSequenceClassification`` as it is.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from imfl.errors import ModelError

SCALE = 1e6  # S: the logits' scale in the pooling layer, against the residual's order-1 hidden state
CONSTANT = 1e13  # K: fixes the layer norm's standard deviation (the logits' share of it is below 1e-7 * |logits|)


def find_student_dir(path: str | Path) -> Path:
    """The directory holding a saved student: ``path`` itself (Student.save) or a run folder's ``adapter/``."""
    path = Path(path)
    for candidate in (path, path / "adapter"):
        if (candidate / "student.json").is_file():
            return candidate
    raise ModelError(
        f"{path}: no trained student there (student.json missing); pass a run folder with a finished round "
        "or a directory written by Student.save"
    )


def export_hf(source: str | Path, out: str | Path) -> Path:
    """Write the student of ``source`` (a run folder or a Student.save directory) to the new directory ``out``
    as a stock transformers text classifier with a model card; returns ``out``."""
    from imfl.student import Student

    source, out = Path(source), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelError(f"{out}: exists and is not empty; choose another --out or remove it first")
    student = Student.load(find_student_dir(source), device="cpu")
    model, tokenizer = build_classifier(student)
    run_dir = source if (source / "config.toml").is_file() else None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        (tmp / "README.md").write_text(model_card(student, run_dir, out.name), encoding="utf-8")
        if out.exists():
            out.rmdir()
        tmp.replace(out)
    except OSError as exc:
        raise ModelError(f"cannot write the exported model to {out} ({exc.strerror or exc}): check the path") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def build_classifier(student):
    """The student as an (untied, float32) ``BertForSequenceClassification`` and its tokenizer."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    encoder = _merged_encoder(student)
    config = encoder.config
    if config.model_type != "bert":
        raise ModelError(
            f"export --format hf supports BERT-architecture students (the default all-MiniLM is one); this "
            f"student's base is a {config.model_type!r} model: use the run's adapter/ with imfl.Student.load"
        )
    hidden, n = int(config.hidden_size), int(student.n_labels_)
    labels = list(student.classes_)
    extra = 1 if student.pooling == "mean" else 0
    if extra and n + 3 > hidden:
        raise ModelError(f"export --format hf handles up to {hidden - 3} labels with mean pooling; this student has {n}")
    settings = config.to_dict() | {
        "architectures": ["BertForSequenceClassification"],
        "num_hidden_layers": config.num_hidden_layers + extra,
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        "problem_type": "single_label_classification",
        "imfl": {
            "pooling": student.pooling,
            "uses_text_pairs": bool(student.uses_text_pairs_),
            "max_length": int(student.max_length),
            "pooling_layer": extra == 1,
        },
    }
    settings.pop("_name_or_path", None)
    settings.pop("torch_dtype", None)
    settings.pop("dtype", None)
    model = BertForSequenceClassification(BertConfig(**settings)).float().eval()
    state = model.state_dict()
    for key, value in encoder.state_dict().items():
        if "bert." + key in state:
            state["bert." + key] = value.detach().float().clone()
    head = student._net.head
    weight, bias = head.weight.detach().float(), head.bias.detach().float()
    with torch.no_grad():
        if student.pooling == "pooler":
            state["classifier.weight"], state["classifier.bias"] = weight.clone(), bias.clone()
        elif student.pooling == "cls":
            # pooler = tanh(x / 1e3), linear to float32 precision for hidden states of order 1..10
            state["bert.pooler.dense.weight"] = torch.eye(hidden) * 1e-3
            state["bert.pooler.dense.bias"] = torch.zeros(hidden)
            state["classifier.weight"], state["classifier.bias"] = weight * 1e3, bias.clone()
        else:
            _mean_pooling_layer(state, f"bert.encoder.layer.{config.num_hidden_layers}.", weight, bias, hidden, n)
    model.load_state_dict(state)
    tokenizer = student._tokenizer
    limit = min(int(student.max_length), int(getattr(config, "max_position_embeddings", student.max_length)))
    tokenizer.model_max_length = limit
    return model, tokenizer


def _merged_encoder(student):
    """The student's encoder with the LoRA adapter folded into its weights (a plain transformers model)."""
    import warnings

    peft_encoder = student._net.encoder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns that the (already merged) adapter is merged again
        peft_encoder.unmerge_adapter()
        return peft_encoder.merge_and_unload()


def _mean_pooling_layer(state: dict, prefix: str, weight, bias, hidden: int, n: int) -> None:
    """Fill one encoder layer and the pooler/classifier so the first token's output gives the student's
    logits of the masked mean (see the module docstring for why each part is what it is)."""
    import torch

    ref, plus, minus = n, n + 1, n + 2
    for key in [k for k in state if k.startswith(prefix)]:
        state[key] = torch.zeros_like(state[key])
    state[prefix + "attention.self.value.weight"] = torch.eye(hidden)
    dense = torch.zeros(hidden, hidden)
    dense[:n] = SCALE * weight
    dense_bias = torch.zeros(hidden)
    dense_bias[plus], dense_bias[minus] = CONSTANT, -CONSTANT
    state[prefix + "attention.output.dense.weight"] = dense
    state[prefix + "attention.output.dense.bias"] = dense_bias
    for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
        state[prefix + norm + ".weight"] = torch.ones(hidden)
        state[prefix + norm + ".bias"] = torch.zeros(hidden)
    pooler = torch.zeros(hidden, hidden)
    pooler[torch.arange(n), torch.arange(n)] = 1.0
    pooler[:n, ref] = -1.0
    state["bert.pooler.dense.weight"] = pooler
    state["bert.pooler.dense.bias"] = torch.zeros(hidden)
    sigma = CONSTANT * math.sqrt(2.0 / hidden)  # the layer norm's standard deviation, fixed by +K and -K
    classifier = torch.zeros(n, hidden)
    classifier[:, :n] = torch.eye(n) * (sigma / SCALE)
    state["classifier.weight"], state["classifier.bias"] = classifier, bias.clone()


# -- the model card ---------------------------------------------------------------------------------------


def model_card(student, run_dir: Path | None, name: str) -> str:
    """README.md of an exported model: task, labels, data, who labelled what at what cost, per-round test metrics,
    the human-only comparison, use and limits. ``run_dir`` None: a bare Student.save directory (less to tell)."""
    labels = list(student.classes_)
    pair = bool(student.uses_text_pairs_)
    call = (
        'classify({"text": question, "text_pair": context}, top_k=None, truncation=True)'
        if pair
        else 'classify(["Profit rose by a third."], top_k=None, truncation=True)'
    )
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags: [imfl, text-classification]",
        "---",
        "",
        f"# {name}",
        "",
        f"A text classifier trained with [imfl](https://pypi.org/project/imfl/) (interactive multi-fidelity learning): "
        f"{len(labels)} labels, {', '.join(labels)}.",
        "",
        "## Use",
        "",
        "```python",
        "from transformers import pipeline",
        "",
        f'classify = pipeline("text-classification", model="{name}")',
        call,
        "```",
        "",
        f"`truncation=True` cuts inputs at {student.max_length} tokens as in training (longer inputs were never seen). "
        "Load it in float32 (the default) or bfloat16; **not float16**: the pooling layer uses constants beyond float16's range.",
        "",
        "## The model",
        "",
        f"- Base encoder: {_base_name(student)}, fine-tuned with LoRA (r={student.lora_r}, alpha={student.lora_alpha}, "
        f"{student.lora_target_modules} layers), merged into the weights.",
        f"- Trained on {student.n_train_} labelled items for {student.epochs_run_} epochs.",
    ]
    if student.pooling == "mean":
        lines.append(
            "- The student classifies the mean of the encoder's last hidden states. The last encoder layer of this "
            "export is not learned: it computes that mean in the first token (attention with equal weights on "
            "every token) and carries the classifier's logits to the stock BERT pooler and classifier."
        )
    if run_dir is None:
        lines += ["", "No run folder was exported with this model: data, labels and metrics are not recorded here."]
        return "\n".join(lines) + "\n"
    lines += ["", *_run_sections(run_dir)]
    return "\n".join(lines) + "\n"


def _base_name(student) -> str:
    return "all-MiniLM-L6-v2 (the bundled default)" if student.model is None else f"`{student.model}`"


def _run_sections(run_dir: Path) -> list[str]:
    import tomllib

    cfg = tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")) if (run_dir / "metrics.json").is_file() else []
    counts: Counter = Counter()
    if (run_dir / "labels.jsonl").is_file():
        with (run_dir / "labels.jsonl").open(encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                counts[(row["source"], row["annotator"])] += 1
    data = cfg.get("data", {})
    out = [
        "## Data and labels",
        "",
        f"- Pool: `{Path(data.get('pool', '?')).name}`; test set: `{Path(data['test']).name if data.get('test') else 'none'}`.",
        f"- Method: strategy `{cfg.get('strategy')}`, budget {cfg['budget']['total']} labels of which {cfg['budget']['human']} "
        f"human, {cfg['budget']['rounds']} rounds, seed {cfg.get('seed')}.",
        "",
        "| source | annotator | labels |",
        "|---|---|---|",
    ]
    out += [f"| {source} | {annotator} | {n} |" for (source, annotator), n in sorted(counts.items())]
    if metrics:
        last = metrics[-1]
        probe = sum(m.get("llm_probe_cost", 0) or 0 for m in metrics)
        out += [
            "",
            f"Cost (in the run's units: human {cfg['human'].get('cost', 1.0)} a label): human "
            f"{last.get('human_cost_total', 0):g}, LLM {last.get('llm_cost_total', 0):g}"
            + (f", LLM self-checks {probe:g}" if probe else "")
            + ".",
            "",
            "## Test metrics per round",
            "",
            "| round | +human | +LLM | LLM accuracy on its labels | test accuracy | test macro-F1 |",
            "|---|---|---|---|---|---|",
        ]
        fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
        out += [
            f"| {m['round']} | {m['human_labels']} | {m['llm_labels']} | {fmt(m.get('llm_accuracy'))} | "
            f"{fmt(m.get('test_accuracy'))} | {fmt(m.get('test_macro_f1'))} |"
            for m in metrics
        ]
        comparison = last.get("human_only")
        if comparison:
            out += ["", "## What the LLM labels bought", "", comparison.get("summary", "")]
    out += [
        "",
        "## Intended use and limits",
        "",
        "- Classifying texts like the pool's into the labels above; the test metrics hold for text like the test set's.",
        "- Labels from the LLM can carry its biases; the per-source counts above say how many the model learned from.",
        "- A small encoder: long inputs are cut at the maximum length, and other languages or domains were not measured.",
    ]
    return out
