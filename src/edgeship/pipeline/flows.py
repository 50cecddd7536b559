"""Quantization flows: how a float model is prepared (observers or fake-quant), switched between
training and evaluation, and converted to int8 for one family of kernels.

Two flows exist in PyTorch today and edgeship needs both: torch.ao's FX graph mode is the path to
int8 TorchScript (fbgemm, qnnpack); torchao's PT2E is the path to ExecuTorch and ONNX QDQ.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from edgeship.targets import Flow


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
def _quiet_fx_deprecation() -> Iterator[None]:
    # torch.ao FX quantization warns on every call that it is deprecated; edgeship knows, and
    # says so once in its README. Other warnings still show.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*deprecated.*")
        yield


@dataclass(frozen=True)
class QuantSettings:
    """What the recipe chose about how to quantize, the same for every flow."""

    observer: str | None = None  # minmax, moving_average_minmax, histogram; None: the flow's own
    per_channel: bool = True
    float_layers: frozenset[str] = frozenset()  # module names left in float

    def with_float_layers(self, names) -> QuantSettings:
        return dataclasses.replace(self, float_layers=frozenset(names))


class QuantFlow(ABC):
    flow: Flow

    def __init__(self, settings: QuantSettings = QuantSettings()) -> None:
        self.settings = settings

    def capture(self, model: nn.Module, example_inputs: tuple, *, qat: bool) -> nn.Module:
        """The graph this flow quantizes; reusable by many prepare_captured calls."""
        return model

    @abstractmethod
    def prepare_captured(self, captured: nn.Module, example_inputs: tuple, *, qat: bool) -> nn.Module:
        """A copy of the captured graph with observers (PTQ) or fake-quant (QAT) inserted."""

    def prepare(self, model: nn.Module, example_inputs: tuple, *, qat: bool) -> nn.Module:
        return self.prepare_captured(self.capture(model, example_inputs, qat=qat), example_inputs, qat=qat)

    @abstractmethod
    def set_train(self, prepared: nn.Module) -> None: ...

    @abstractmethod
    def set_eval(self, prepared: nn.Module) -> None: ...

    @abstractmethod
    def convert(self, prepared: nn.Module) -> nn.Module:
        """The int8 model, in eval mode. `prepared` is left as it was."""

    @abstractmethod
    def freeze_bn(self, prepared: nn.Module) -> None:
        """Batch norm stops updating its statistics; training goes on."""

    @abstractmethod
    def freeze_observers(self, prepared: nn.Module) -> None:
        """Quantization ranges stop moving; fake quantization goes on."""

    def engine(self):
        """Context in which the converted model must be built and run."""
        return nullcontext()


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
        # Embeddings take weight-only float-qparams quantization, not int8 activations; the global
        # qconfig would make QAT refuse them ("Embedding weights requires a qscheme of
        # torch.per_channel_affine_float_qparams"). They stay float, as in the PT2E flow.
        mapping.set_object_type(nn.Embedding, None)
        for name in settings.float_layers:
            mapping.set_module_name(name, None)
        return mapping

    def prepare_captured(self, model: nn.Module, example_inputs: tuple, *, qat: bool) -> nn.Module:
        from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

        model = copy.deepcopy(model)
        with _quiet_fx_deprecation(), self.engine():
            mapping = self.qconfig_mapping(qat=qat)
            if qat:
                return prepare_qat_fx(model.train(), mapping, example_inputs,
                                      backend_config=self._backend_config())
            return prepare_fx(model.eval(), mapping, example_inputs,
                              backend_config=self._backend_config())

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

        with _quiet_fx_deprecation(), self.engine():
            converted = convert_fx(copy.deepcopy(prepared).eval(), backend_config=self._backend_config())
        if self.engine_name == "qnnpack":
            _contiguous_before_clamps(converted)
        return converted


_CLAMP_MODULES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
_CLAMP_FUNCTIONS = {torch.relu, torch.clamp, torch.clip, nn.functional.relu, nn.functional.relu6,
                    nn.functional.hardtanh}


def _contiguous_before_clamps(graph_module: torch.fx.GraphModule) -> None:
    """qnnpack's quantized conv returns channels-last tensors, and in torch 2.13 its unfused
    quantized relu/relu6/hardtanh/clamp read a channels-last input as if it were NCHW: the channels
    come out scrambled (a Conv-BN-ReLU6 lost all accuracy). A contiguous copy before each gives
    them the layout they assume; on an NCHW tensor it costs nothing."""
    modules = dict(graph_module.named_modules())
    graph = graph_module.graph
    for node in list(graph.nodes):
        clamps = (node.op == "call_module" and isinstance(modules[node.target], _CLAMP_MODULES)) or \
                 (node.op == "call_function" and node.target in _CLAMP_FUNCTIONS) or \
                 (node.op == "call_method" and node.target in ("relu", "clamp", "clip"))
        if clamps and node.args and isinstance(node.args[0], torch.fx.Node):
            with graph.inserting_before(node):
                node.update_arg(0, graph.call_method("contiguous", (node.args[0],)))
    graph_module.recompile()


class Pt2eXnnpackFlow(QuantFlow):
    flow = Flow.PT2E_XNNPACK

    def capture(self, model: nn.Module, example_inputs: tuple, *, qat: bool) -> nn.Module:
        model = copy.deepcopy(model).train() if qat else copy.deepcopy(model).eval()
        # Export with a dynamic batch: a graph specialised to batch 1 makes QAT train one sample
        # at a time, which collapses batch norm (seen: 0.994 -> 0.75 accuracy).
        batch = torch.export.Dim("batch", min=1, max=4096)
        batched = tuple(x.expand(2, *x.shape[1:]).contiguous() for x in example_inputs)
        return torch.export.export(model, batched, dynamic_shapes=tuple({0: batch} for _ in batched)).module()

    def prepare_captured(self, captured: nn.Module, example_inputs: tuple, *, qat: bool) -> nn.Module:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

        graph = copy.deepcopy(captured)
        quantizer = XNNPACKQuantizer().set_global(self.quantization_config(qat=qat))
        if self.settings.float_layers:
            # set_module_name(name, None) is "not supported yet" in XNNPACKQuantizer: a filter
            # that declines every node inside a float layer does the same.
            from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

            inside = [get_module_name_filter(name) for name in self.settings.float_layers]
            quantizer.set_filter_function(lambda node: not any(f(node) for f in inside))
        return prepare_qat_pt2e(graph, quantizer) if qat else prepare_pt2e(graph, quantizer)

    def convert_dynamic(self, model: nn.Module, examples: tuple) -> nn.Module:
        """Linear layers with int8 weights and activations quantized at run time."""
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=self.settings.per_channel, is_dynamic=True))
        prepared = prepare_pt2e(self.capture(model, examples, qat=False), quantizer)
        prepared(*examples)  # dynamic observers are placeholders; one pass fixes their dtypes
        return convert_pt2e(prepared)

    def quantization_config(self, *, qat: bool):
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e import MinMaxObserver, MovingAverageMinMaxObserver

        config = get_symmetric_quantization_config(is_per_channel=self.settings.per_channel, is_qat=qat)
        observer = {"minmax": MinMaxObserver,
                    "moving_average_minmax": MovingAverageMinMaxObserver}.get(self.settings.observer)
        if observer is None:  # histogram is XNNPACK's own default for calibration
            return config
        activation = dataclasses.replace(config.input_activation,
                                         observer_or_fake_quant_ctr=observer.with_args(eps=2**-12))
        return dataclasses.replace(config, input_activation=activation, output_activation=activation)

    def freeze_bn(self, prepared: nn.Module) -> None:
        # An exported graph has no module to flip: batch norm in eval form uses its running
        # statistics, and gradients still flow, which is what freezing them means.
        self.set_eval(prepared)

    def freeze_observers(self, prepared: nn.Module) -> None:
        from torchao.quantization.pt2e import disable_observer

        prepared.apply(disable_observer)

    def set_train(self, prepared: nn.Module) -> None:
        from torchao.quantization.pt2e import move_exported_model_to_train

        move_exported_model_to_train(prepared)

    def set_eval(self, prepared: nn.Module) -> None:
        from torchao.quantization.pt2e import move_exported_model_to_eval

        move_exported_model_to_eval(prepared)

    def convert(self, prepared: nn.Module) -> nn.Module:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        prepared = copy.deepcopy(prepared)
        self.set_eval(prepared)
        return convert_pt2e(prepared)


def flow_for(flow: Flow, settings: QuantSettings = QuantSettings()) -> QuantFlow:
    return {
        Flow.FX_FBGEMM: lambda: FxFlow(Flow.FX_FBGEMM, "fbgemm", settings),
        Flow.FX_QNNPACK: lambda: FxFlow(Flow.FX_QNNPACK, "qnnpack", settings),
        Flow.PT2E_XNNPACK: lambda: Pt2eXnnpackFlow(settings),
    }[flow]()
