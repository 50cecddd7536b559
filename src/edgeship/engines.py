"""Process-wide torch settings a run sets and restores: the quantized kernel library (fbgemm on
x86, qnnpack on ARM: int8 weights are packed for the engine set when a model is converted or
traced, and must be run with it), the attention fast path, and where torch's logs go."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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


@contextmanager
def attention_slow_path() -> Iterator[None]:
    """nn.TransformerEncoderLayer and nn.MultiheadAttention run their Python code, not the fused
    inference fast path, restoring the setting after. The fast path is one opaque float op
    (aten::_transformer_encoder_layer_fwd) that hides the layer's Linears from every quantizer,
    and after quantize_dynamic it breaks ('function' object has no attribute 'device'); the
    Python path is the same arithmetic in ops the flows can quantize."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


_torch_log: Path | None = None  # where torch_logs_into sends torch's output, while it does


@contextmanager
def torch_logs_into(path: Path) -> Iterator[None]:
    """torch's own log output (its warnings, and with `captures_logged` the graph dumps of a
    failed capture, ~150 lines) appended to `path` instead of stderr, for as long as the block
    runs. edgeship says what failed in one line; the dumps stay where whoever wants them looks."""
    global _torch_log
    handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    swapped = [(logger, old) for name, logger in list(logging.root.manager.loggerDict.items())
               if (name == "torch" or name.startswith("torch.")) and isinstance(logger, logging.Logger)
               for old in logger.handlers if getattr(old, "stream", None) is sys.stderr]
    for logger, old in swapped:
        logger.removeHandler(old)
        logger.addHandler(handler)
    previous, _torch_log = _torch_log, path
    try:
        yield
    finally:
        _torch_log = previous
        for logger, old in swapped:
            logger.removeHandler(handler)
            logger.addHandler(old)
        handler.close()


@contextmanager
def captures_logged() -> Iterator[None]:
    """Around a torch.export capture: it prints a failed capture's partial graph straight to
    sys.stderr (a print, not a log record), so stderr goes to torch_logs_into's file meanwhile."""
    if _torch_log is None:
        yield
        return
    with open(_torch_log, "a", encoding="utf-8") as log, contextlib.redirect_stderr(log):
        yield
