"""Which floating-point precision to compute in: ``auto`` means bfloat16 where the CPU (or GPU) runs it
natively, float32 elsewhere (bfloat16 emulated in software is slower than float32). And on how many CPU threads
(``torch_threads``): a float32 sum depends on how it was split between threads, so a benchmark cell's numbers repeat
exactly only at its thread count.

Measured on FPB (docs/benchmarks/student.md): in bfloat16 the student kept its test accuracy and predicted 1.6x
faster; the LLM scored prompts 1.6x faster and was right on 19 of 48 against 21 in float32.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

DTYPES = ("auto", "float32", "bfloat16")


@functools.cache
def native_bf16() -> bool:
    """True when this machine's CPU has bfloat16 instructions (AVX512-BF16 or AMX) that torch uses."""
    import torch

    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(setting: str, device_type: str = "cpu") -> str:
    """``float32`` or ``bfloat16`` for a setting of ``auto``, ``float32`` or ``bfloat16``."""
    if setting != "auto":
        return setting
    if device_type == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if native_bf16() else "float32"


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block on ``n`` torch CPU threads, then restore the previous count; ``None`` changes nothing."""
    import torch

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
