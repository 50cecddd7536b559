"""Dynamic quantization: int8 weights, activations quantized at run time from their own range.
No calibration, no QAT. For models dominated by Linear (and LSTM/GRU) layers: language models.

Each runtime has its own support, so each format chooses its path (its FormatSpec's
`quantize_dynamic`): torch.ao's `quantize_dynamic` for TorchScript (quantized::linear_dynamic on
fbgemm or qnnpack), PT2E with the XNNPACK quantizer's dynamic config for ExecuTorch (XNNPACK's
dynamically quantized fully-connected; Linear only), and ONNX Runtime's own `quantize_dynamic` on
the fp32 ONNX export (no PyTorch model in between).
"""

from __future__ import annotations

import copy

from torch import nn

from edgeship.engines import quantized_engine
from edgeship.errors import UserError
from edgeship.quantize.attention import split_projections
from edgeship.quantize.float_layers import EMBEDDING_TABLES, required_float_layers, within
from edgeship.quantize.flow import QuantSettings
from edgeship.quantize.fx import quiet_fx_deprecation
from edgeship.quantize.pt2e import Pt2eXnnpackFlow
from edgeship.targets import Flow, Target

DYNAMIC_TYPES = {nn.Linear, nn.LSTM, nn.GRU}


def check_quantizable(model: nn.Module, targets: list[Target]) -> None:
    """Before any training: dynamic quantization of a model without such layers does nothing."""
    if targets and not any(isinstance(m, tuple(DYNAMIC_TYPES)) for m in model.modules()):
        names = ", ".join(t.name for t in targets)
        raise UserError(f"quantization.mode dynamic ({names}): the model has no Linear, LSTM or GRU "
                        f"layer to quantize dynamically; use mode = 'static'")


def torch_ao_dynamic(model: nn.Module, engine: str, float_layers: frozenset[str] = frozenset()) -> nn.Module:
    """Linear, LSTM and GRU with int8 weights packed for `engine` (fbgemm, qnnpack); attention's
    projections too (attention.py); embedding tables weight-only, 8-bit rows (as the static flow
    quantizes them, fx.py); none in or under `float_layers`, nor a table torch.ao cannot keep
    exact (float_layers.FLOAT_REQUIRED)."""
    from torch.ao.quantization import default_dynamic_qconfig, float_qparams_weight_only_qconfig, quantize_dynamic

    model = split_projections(copy.deepcopy(model).eval())
    spec: dict = {kind: default_dynamic_qconfig for kind in DYNAMIC_TYPES}  # what the set form means
    spec.update({table: float_qparams_weight_only_qconfig for table in EMBEDDING_TABLES})
    kept = set(float_layers) | _tables_kept_float(model)
    # a module's name outranks its type, but a child's type outranks its parent's name: name each
    spec.update({name: None for name, _ in model.named_modules() if within(name, kept)})
    with quiet_fx_deprecation(), quantized_engine(engine):
        return quantize_dynamic(model, spec)


def _tables_kept_float(model: nn.Module) -> set[str]:
    """The embedding tables the static flow leaves float too (the rule is both engines')."""
    return {name for name in required_float_layers(model, Flow.FX_FBGEMM)
            if isinstance(model.get_submodule(name), EMBEDDING_TABLES)}


def pt2e_xnnpack_dynamic(model: nn.Module, examples: tuple, float_layers: frozenset[str] = frozenset()) -> nn.Module:
    """Linear layers with int8 weights, as XNNPACK's dynamically quantized fully-connected; none
    in or under `float_layers`."""
    return Pt2eXnnpackFlow(QuantSettings(float_layers=frozenset(float_layers))).convert_dynamic(model, examples)
