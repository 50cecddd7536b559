"""torch's quantized kernel library (fbgemm on x86, qnnpack on ARM) is process-wide state: int8
weights are packed for the engine set when a model is converted or traced, and must be run with it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def quantized_engine(name: str) -> Iterator[None]:
    """Pack and run quantized weights with this kernel library, restoring the previous one."""
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous
