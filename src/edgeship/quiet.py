"""The libraries' notices that drown edgeship's own findings (torch.ao FX and quantized-tensor
deprecations, pytree FutureWarnings, torchao's optional-kernel loading, quantizers explaining what
they skip): silenced inside edgeship's own calls only. `quiet_libraries()` restores the warning
filters and the loggers' levels on the way out, so a program that calls edgeship keeps its own
settings."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

LOGGERS = ("torch", "torchao", "executorch", "onnxscript")
MESSAGES = (".*reduce_range will be deprecated.*", ".*quantized tensor creation functions.*",
            "Exporting a model while it is in training mode.*",
            # torchao's X86InductorQuantizer on an op whose input stays float: the report's int8
            # share names the float layers
            "The input of .* is not quantized, skip annotate.*",
            # torch.ao's reference RNN modules copying their own tensors
            "To copy construct from a tensor.*",
            # torch's dynamic int8 Linear/LSTM always ask for reduce_range; QNNPACK says it ignores it
            ".*qnnpack incorrectly ignores reduce_range.*")


def _filter() -> None:
    from torch.jit import TracerWarning

    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for message in MESSAGES:
        warnings.filterwarnings("ignore", message=message)
    # torch's own modules branching on sizes while TorchScript traces them (its dynamic int8 RNNs
    # check their input's width); the same warning raised in a model's own code still shows
    warnings.filterwarnings("ignore", category=TracerWarning, module=r"torch\.")


@contextmanager
def quiet_libraries() -> Iterator[None]:
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    with warnings.catch_warnings():
        _filter()
        import torch  # noqa: F401 - torch sets its loggers' levels on import: before ours

        for name in LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


def quiet_libraries_for_good() -> None:
    """For the command line, whose process is edgeship's alone: the same silence, not undone.
    torch sets its loggers' levels on import, so it is imported first."""
    _filter()
    import torch  # noqa: F401

    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_torch_cpp_for_good() -> None:
    """For the command line, before torch is imported: torch's C++ warnings raised where no Python
    filter sees them (the QNNPACK reduce_range notice in a frozen TorchScript graph) are printed by
    c10's logging, which TORCH_CPP_LOG_LEVEL sets at torch's import. A level the user set stays."""
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
