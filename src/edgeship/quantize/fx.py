"""torch.ao FX graph mode quantization: the path to int8 TorchScript, with the fbgemm (x86) or
qnnpack (ARM) backend config."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from edgeship.engines import quantized_engine
from edgeship.quantize.attention import dynamic_linears_in_attention
from edgeship.quantize.float_layers import DYNAMIC_IN_STATIC, EMBEDDING_TABLES, FX_ATTENTION_LEAVES
from edgeship.quantize.flow import QuantFlow, QuantSettings
from edgeship.quantize.fx_scalars import shape_values_fixed
from edgeship.quantize.fx_untraceable import untraceable_layers
from edgeship.quantize.mask_paths import fx_float_masks
from edgeship.quantize.qat_capture import capture_form, fx_switchable
from edgeship.quantize.transposed_bn import transposed_bn_folded
from edgeship.targets import Flow


@contextmanager
def quiet_fx_deprecation() -> Iterator[None]:
    # torch.ao FX quantization warns on every call that it is deprecated; edgeship knows, and
    # says so once in its README. Other warnings still show.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*deprecated.*")
        yield


class _FloatPReLU(nn.PReLU):
    """An nn.PReLU that stays float. torch's FX lowering swaps every nn.PReLU found between a
    dequantize and a quantize for its int8 module, qconfig or not (and without one it fails).
    This class is not torch.nn's own, so FX traces into it. Its F.prelu has no int8 pattern, and
    it stays a float op."""

    @classmethod
    def holding(cls, prelu: nn.PReLU) -> _FloatPReLU:
        floated = cls(prelu.num_parameters)
        floated.weight = prelu.weight
        return floated


def _float_prelus(model: nn.Module, names: frozenset[str]) -> nn.Module:
    """`model`, changed in place: each nn.PReLU named in `names` becomes a _FloatPReLU holding
    the same weight."""
    for name in names:
        if type(model.get_submodule(name)) is nn.PReLU:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, _FloatPReLU.holding(model.get_submodule(name)))
    return model


class FxFlow(QuantFlow):
    def __init__(self, flow: Flow, engine: str, settings: QuantSettings = QuantSettings()) -> None:
        super().__init__(settings)
        self.flow = flow
        self.engine_name = engine

    def _backend_config(self):
        from torch.ao.quantization.backend_config import (
            get_fbgemm_backend_config,
            get_qnnpack_backend_config,
        )

        return {"fbgemm": get_fbgemm_backend_config,
                "qnnpack": get_qnnpack_backend_config}[self.engine_name]()

    def engine(self):
        return quantized_engine(self.engine_name)

    def qconfig_mapping(self, *, qat: bool):
        from torch.ao.quantization import (
            QConfig,
            fake_quantize,
            get_default_qat_qconfig_mapping,
            get_default_qconfig_mapping,
            observer,
        )

        settings = self.settings
        if qat:
            mapping = get_default_qat_qconfig_mapping(self.engine_name)
            weight = (fake_quantize.default_fused_per_channel_wt_fake_quant if settings.per_channel
                      else fake_quantize.default_fused_wt_fake_quant)
            mapping.set_global(QConfig(activation=mapping.global_qconfig.activation, weight=weight))
        else:
            mapping = get_default_qconfig_mapping(self.engine_name)
            activation = {
                None: observer.HistogramObserver,
                "histogram": observer.HistogramObserver,
                "minmax": observer.MinMaxObserver,
                "moving_average_minmax": observer.MovingAverageMinMaxObserver,
            }[settings.observer]
            # fbgemm without VNNI saturates 16-bit accumulators at full 8-bit range: 7-bit
            # activations, as torch's own fbgemm default does.
            activation = activation.with_args(reduce_range=self.engine_name == "fbgemm")
            weight = (observer.default_per_channel_weight_observer if settings.per_channel
                      else observer.default_weight_observer)
            mapping.set_global(QConfig(activation=activation, weight=weight))
        return self._per_layer(mapping, qat=qat)

    def _per_layer(self, mapping, *, qat: bool):
        """The layer types and names that do not take the global qconfig."""
        from torch.ao.quantization import default_dynamic_qconfig, float_qparams_weight_only_qconfig
        from torch.ao.quantization.qconfig import default_embedding_qat_qconfig

        # A lookup has no int8 activations: torch.ao quantizes embedding tables weight-only, each
        # row 8-bit with its own float scale and offset (quantized::embedding_byte, on fbgemm and
        # QNNPACK); the global qconfig would be refused ("Embedding weights requires a qscheme of
        # torch.per_channel_affine_float_qparams").
        for table in EMBEDDING_TABLES:
            mapping.set_object_type(table, default_embedding_qat_qconfig if qat
                                    else float_qparams_weight_only_qconfig)
        for (flow, layer_type) in DYNAMIC_IN_STATIC:
            if flow is self.flow:  # static kernels it has none of, dynamic ones it has
                # (attention leaves: none that FX converts, and observed whole QAT's convert fails;
                # their Linears after it, in `convert`)
                mapping.set_object_type(layer_type, None if layer_type in FX_ATTENTION_LEAVES
                                        else default_dynamic_qconfig)
        for name in self.settings.float_layers:
            mapping.set_module_name(name, None)
        return mapping

    def capture(self, model: nn.Module, example_inputs: tuple, *, qat: bool) -> nn.Module:
        if qat:  # torch.ao FX QAT cannot fuse a transposed convolution with its batch norm
            model = transposed_bn_folded(model, grouped_only=False)
        self.untraceable = untraceable_layers(model)
        return shape_values_fixed(model, example_inputs, frozenset(self.untraceable))

    def prepare_captured(self, model: nn.Module, example_inputs: tuple, *, qat: bool) -> nn.Module:
        from torch.ao.quantization.fx.custom_config import PrepareCustomConfig
        from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

        model = _float_prelus(copy.deepcopy(model), self.settings.float_layers)
        untraceable = sorted(untraceable_layers(model))
        leaves = PrepareCustomConfig().set_non_traceable_module_names(untraceable)
        model = capture_form(model, fx_switchable) if qat else model.eval()
        with quiet_fx_deprecation(), self.engine():
            mapping, backend = self.qconfig_mapping(qat=qat), self._backend_config()
            for name in untraceable:
                # torch.ao matches non-traceable names against a child's own name only: a nested
                # one ("blocks.0") would still get QAT's fake-quant layers, and ship them
                mapping.set_module_name(name, None)
            self.float_for_masks = fx_float_masks(model, untraceable, mapping)
            if qat:
                prepared = prepare_qat_fx(model, mapping, example_inputs, prepare_custom_config=leaves,
                                          backend_config=backend)
                return prepared.train()
            return prepare_fx(model, mapping, example_inputs, prepare_custom_config=leaves,
                              backend_config=backend)

    def freeze_bn(self, prepared: nn.Module) -> None:
        from torch.ao.nn.intrinsic.qat import freeze_bn_stats

        prepared.apply(freeze_bn_stats)

    def freeze_observers(self, prepared: nn.Module) -> None:
        from torch.ao.quantization import disable_observer

        prepared.apply(disable_observer)

    def set_train(self, prepared: nn.Module) -> None:
        prepared.train()

    def set_eval(self, prepared: nn.Module) -> None:
        prepared.eval()

    def convert(self, prepared: nn.Module) -> nn.Module:
        from torch.ao.quantization.quantize_fx import convert_fx

        with quiet_fx_deprecation(), self.engine():
            converted = convert_fx(copy.deepcopy(prepared).eval(), backend_config=self._backend_config())
            dynamic_linears_in_attention(converted, self.settings.float_layers)
        qnnpack = self.engine_name == "qnnpack"
        _contiguous_before(converted, lambda node, modules: _norm(node, modules) or qnnpack and _clamp(node, modules))
        return converted


_CLAMP_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
_CLAMP_FUNCTIONS = {torch.relu, torch.clamp, torch.clip, nn.functional.relu, nn.functional.relu6,
                    nn.functional.hardtanh}


def _clamp(node: torch.fx.Node, modules: dict) -> bool:
    """qnnpack's quantized conv returns channels-last tensors, and in torch 2.13 its unfused
    quantized relu/relu6/hardtanh/clamp read a channels-last input as if it were NCHW: the channels
    come out scrambled (a Conv-BN-ReLU6 lost all accuracy)."""
    return (node.op == "call_module" and isinstance(modules[node.target], _CLAMP_MODULES)) or \
        (node.op == "call_function" and node.target in _CLAMP_FUNCTIONS) or \
        (node.op == "call_method" and node.target in ("relu", "clamp", "clip"))


def _norm(node: torch.fx.Node, modules: dict) -> bool:
    """torch 2.13's quantized InstanceNorm and GroupNorm, on both engines, answer wrong on a
    channels-last input (what a quantized conv returns) from some batch size on: max error 11 on
    outputs of 5 at batch 64 (instance norm) or 256 (group norm), right at batch 1. An artifact
    traced at batch 1 then fails on a device feeding batches; the converted model failed
    verification against its own artifact (top-1 agreement 0.13)."""
    from torch.ao.nn import quantized as nnq

    norms = (nnq.InstanceNorm1d, nnq.InstanceNorm2d, nnq.InstanceNorm3d, nnq.GroupNorm)
    return node.op == "call_module" and isinstance(modules[node.target], norms)


def _contiguous_before(graph_module: torch.fx.GraphModule, reads_nchw_only) -> None:
    """A contiguous copy before each node `reads_nchw_only(node, modules)` picks, which gives it the
    layout it assumes; on an NCHW tensor it costs nothing."""
    modules = dict(graph_module.named_modules())
    graph = graph_module.graph
    for node in list(graph.nodes):
        if reads_nchw_only(node, modules) and node.args and isinstance(node.args[0], torch.fx.Node):
            with graph.inserting_before(node):
                node.update_arg(0, graph.call_method("contiguous", (node.args[0],)))
    graph_module.recompile()
