"""The submodules torch.ao's FX graph mode cannot trace, kept float as its documentation says.

FX traces a forward with proxies in place of tensors, so a forward that uses a tensor's size as a
Python number fails there: `torch.zeros(x.size(0), hidden)` ("zeros() received an invalid
combination of arguments - got (Proxy, ...)"), `mask[:T, :T]` with `T` from `x.size(1)` ("slice
indices must be integers"), `for t in range(x.size(1))`, `if x.sum() > 0`. torch.export traces such
code, so the ONNX and ExecuTorch targets take it; torch.ao's FX flows (the TorchScript targets)
refused the whole model, with a bare TypeError. torch.ao's remedy is to declare the module
non-traceable (PrepareCustomConfig.set_non_traceable_module_names): it stays a float module called
from the quantized graph. edgeship finds those modules by tracing as FX's prepare does, and names
each with the line that stopped the trace. A forward of the model itself that FX cannot trace has
no such remedy: the error says where, and what to do."""

from __future__ import annotations

import copy
import linecache
import traceback

from torch import nn


class Untraceable(RuntimeError):
    """The model's own forward, not a submodule's, is what FX cannot trace."""


def untraceable_layers(model: nn.Module) -> dict[str, str]:
    """{module name: why} for the outermost submodules of `model` that FX cannot trace, found
    one at a time, as each found one becomes a leaf. Raises Untraceable when the model's own
    forward is the one that fails."""
    from torch.ao.quantization.fx.tracer import QuantizationTracer

    probe = copy.deepcopy(model).eval()  # the form QAT and calibration capture (qat_capture.py)
    names = {id(m): name for name, m in probe.named_modules()}
    found: dict[str, str] = {}
    while True:
        try:
            QuantizationTracer(list(found), []).trace(probe)
            return found
        except Exception as error:  # noqa: BLE001 - whatever stops the trace: located, then named
            name, where = _failing_module(error, names)
            if not name or name in found:
                raise Untraceable(
                    f"FX graph mode cannot trace {type(model).__name__}.forward ({where}: "
                    f"{type(error).__name__}: {error}); torch.ao's FX flows trace with proxies, so "
                    f"a forward cannot use a tensor's size or value as a Python number. Move that "
                    f"code into a submodule (edgeship keeps a submodule FX cannot trace float on the "
                    f"TorchScript targets; a decision on a tensor's values needs torch.cond), or leave "
                    f"the TorchScript targets out: torch.export, which the ONNX and ExecuTorch "
                    f"targets use, traces sizes") from None
            found[name] = (f"FX graph mode cannot trace its forward ({where}: {type(error).__name__}: "
                           f"{error}): it stays a float module, torch.ao's non-traceable module")


def _failing_module(error: Exception, names: dict[int, str]) -> tuple[str, str]:
    """The name of the innermost module of the model whose forward raised `error` ("" for the model
    itself), and the line of the model's code that did."""
    name, where = "", "its forward"
    for frame, line in traceback.walk_tb(error.__traceback__):
        module = frame.f_locals.get("self")
        if isinstance(module, nn.Module) and id(module) in names:
            name = names[id(module)]
            code = linecache.getline(frame.f_code.co_filename, line).strip()
            where = f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{line} `{code}`"
    return name, where
