"""torchao PT2E with the XNNPACK quantizer: the path to ExecuTorch (lowered to XNNPACK) and to
ONNX QDQ (the same quantized graph, exported to ONNX)."""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from edgeship.quantize.flow import QuantFlow, QuantSettings
from edgeship.targets import Flow


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
