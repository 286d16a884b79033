"""Chat prompts for LLM annotation: the instruction, labeled demonstrations, then the item to label.

The layout was chosen on the FPB pool with SmolLM2-135M-Instruct (300 queries, 4 retrieved demonstrations
from 200 labeled items): restating the task in every user turn gave 58-63% accuracy (the spread is the
wording of the label line), against 52% with the task in the system message only and 40% with all examples
listed in one user message; zero-shot it gave 54% against 31%. It is a multi-turn chat::

    system:    <task>
    user:      <task>\n\nText: <demo 1 text>     \
    assistant: <demo 1 label>                    /  one user/assistant pair per demonstration, in the given order
    ...
    user:      <task>\n\nText: <item text>       <- always the last message; its answer should be one label

where ``<task>`` is the instruction followed by ``Answer with exactly one of: <labels>.`` (left out when the
instruction already names every label). With label descriptions (``data.label_descriptions``), the system message
alone goes on, after a blank line, with one line ``<label>: <description>`` per described label in label order;
the user turns keep the short task. Without descriptions the prompt is exactly as it was before they existed, so
cached answers and earlier measurements stay valid. With ``repeat_instruction=False`` the user turns hold only the text,
which saves tokens when the instruction is long (e.g. 77 intent names) at some cost in accuracy.

With a second input, each user turn reads ``Context: <text_pair>`` then ``Text: <text>`` (the names are
``pair_names``), so that the main text stands right before the answer. Long ``text_pair`` values are shortened
in the middle to ``max_pair_chars`` characters, keeping their beginning and end; ``text`` is never cut.

Because every demonstration is its own pair of turns, a backend whose context is too short can drop the oldest
demonstrations without touching the item (``LocalBackend`` does).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from imfl.errors import ModelError

#: Default cap on the characters of each ``text_pair`` (a PubMedQA abstract averages ~1,350 characters).
DEFAULT_MAX_PAIR_CHARS = 1000
# A task longer than this (e.g. one naming Banking77's 77 intents, about 1,700 characters) is stated once, in the
# system message: restating it in every user turn would cost about 600 tokens per demonstration.
MAX_REPEATED_TASK_CHARS = 400
_ELLIPSIS = " [...] "


@dataclass(frozen=True)
class Demo:
    """A human-labeled demonstration shown to the LLM before the item."""

    id: str
    text: str
    label: str
    text_pair: str | None = None


def shorten(text: str, max_chars: int | None) -> str:
    """``text`` cut in the middle to at most ``max_chars`` characters (beginning and end kept, at word
    boundaries where possible, joined by `` [...] ``); unchanged if short enough or ``max_chars`` is None."""
    if max_chars is None or len(text) <= max_chars:
        return text
    keep = max_chars - len(_ELLIPSIS)
    if keep < 2:
        return text[:max_chars]
    head, tail = text[: (keep + 1) // 2], text[len(text) - keep // 2 :]
    if " " in head:
        head = head[: head.rindex(" ")]
    if " " in tail:
        tail = tail[tail.index(" ") + 1 :]
    return head.rstrip() + _ELLIPSIS + tail.lstrip()


def _user_turn(text: str, text_pair: str | None, pair_names: tuple[str, str], max_pair_chars: int | None) -> str:
    main = f"{pair_names[0]}: {text}"
    if not text_pair:
        return main
    return f"{pair_names[1]}: {shorten(text_pair, max_pair_chars)}\n{main}"


def _task(instruction: str, labels: Sequence[str]) -> str:
    instruction = instruction.strip()
    if all(re.search(rf"(?<!\w){re.escape(label)}(?!\w)", instruction) for label in labels):
        return instruction  # the instruction already names the answers
    answer = "Answer with exactly one of: " + ", ".join(labels) + "."
    return f"{instruction} {answer}" if instruction else answer


def _described(task: str, labels: Sequence[str], descriptions: Mapping[str, str] | None) -> str:
    """The system message: the task, then a line ``label: description`` per described label (each description on
    one line); just the task when no label has one."""
    lines = [f"{label}: {' '.join(descriptions[label].split())}" for label in labels if descriptions and descriptions.get(label)]
    return task + "\n\n" + "\n".join(lines) if lines else task


def build_messages(
    instruction: str,
    labels: Sequence[str],
    text: str,
    text_pair: str | None = None,
    demos: Sequence[Demo] = (),
    *,
    pair_names: tuple[str, str] = ("Text", "Context"),
    max_pair_chars: int | None = DEFAULT_MAX_PAIR_CHARS,
    repeat_instruction: bool = True,
    descriptions: Mapping[str, str] | None = None,
) -> list[dict[str, str]]:
    """Chat messages (OpenAI format: role/content) whose assistant answer should be exactly one label.

    A system message holds the task: the instruction, then the list of labels unless the instruction already
    names them all. Each demonstration becomes a user turn answered by an assistant turn holding its label, in
    the order given (put the most similar last); the item is the final user turn. Every user turn starts with
    the task again (it helps a small model keep to the labels) unless ``repeat_instruction`` is False or the task
    is longer than ``MAX_REPEATED_TASK_CHARS``. ``pair_names`` name the two inputs (e.g.
    ``("Question", "Context")`` for PubMedQA); every ``text_pair`` is shortened to ``max_pair_chars``
    (``None``: never), while ``text`` is never cut. ``descriptions`` (label -> what it means) add a line per
    described label to the system message only; labels outside ``labels`` are refused.
    """
    labels = list(labels)
    if not labels:
        raise ModelError("build_messages() got no labels; give the task's label set")
    if len(pair_names) != 2:
        raise ModelError(f"pair_names={pair_names!r} must be two names, e.g. ('Question', 'Context')")
    if max_pair_chars is not None and max_pair_chars < 1:
        raise ModelError(f"max_pair_chars={max_pair_chars!r} must be a positive number of characters, or None for no limit")
    if descriptions and (unknown := [label for label in descriptions if label not in labels]):
        raise ModelError(
            f"a description is given for {unknown[0]!r}, which is not one of {labels}; describe only labels of the set"
        )
    task = _task(instruction, labels)
    prefix = f"{task}\n\n" if repeat_instruction and len(task) <= MAX_REPEATED_TASK_CHARS else ""
    messages = [{"role": "system", "content": _described(task, labels, descriptions)}]
    for demo in demos:
        if demo.label not in labels:
            raise ModelError(
                f"demonstration {demo.id!r} has label {demo.label!r}, which is not one of {labels}; "
                "fix its label or the label set"
            )
        messages.append({"role": "user", "content": prefix + _user_turn(demo.text, demo.text_pair, pair_names, max_pair_chars)})
        messages.append({"role": "assistant", "content": demo.label})
    messages.append({"role": "user", "content": prefix + _user_turn(text, text_pair, pair_names, max_pair_chars)})
    return messages


def prompt_hash(messages: list[dict[str, str]]) -> str:
    """SHA-256 hex digest of a canonical JSON dump of ``messages`` (sorted keys, no whitespace, UTF-8)."""
    dump = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(dump.encode("utf-8")).hexdigest()
