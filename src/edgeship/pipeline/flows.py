"""Quantization flows: how a float model is prepared (observers or fake-quant), switched between
training and evaluation, and converted to int8 for one family of kernels.

Two flows exist in PyTorch today and edgeship needs both: torch.ao's FX graph mode is the path to
int8 TorchScript (fbgemm, qnnpack); torchao's PT2E is the path to ExecuTorch and ONNX QDQ.
"""

from __future__ import annotations

import copy
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

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


class QuantFlow(ABC):
    flow: Flow

    @abstractmethod
    def prepare(self, model: nn.Module, example_inputs: tuple, *, qat: bool) -> nn.Module:
        """A copy of `model` with observers (PTQ) or fake-quant modules (QAT) inserted."""

    @abstractmethod
    def set_train(self, prepared: nn.Module) -> None: ...

    @abstractmethod
    def set_eval(self, prepared: nn.Module) -> None: ...

    @abstractmethod
    def convert(self, prepared: nn.Module) -> nn.Module:
        """The int8 model, in eval mode. `prepared` is left as it was."""

    def engine(self):
        """Context in which the converted model must be built and run."""
        return nullcontext()


class FxFlow(QuantFlow):
    def __init__(self, flow: Flow, engine: str) -> None:
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

    def prepare(self, model: nn.Module, example_inputs: tuple, *, qat: bool) -> nn.Module:
        from torch.ao.quantization import get_default_qat_qconfig_mapping, get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import prepare_fx, prepare_qat_fx

        model = copy.deepcopy(model)
        with _quiet_fx_deprecation(), self.engine():
            if qat:
                return prepare_qat_fx(model.train(), get_default_qat_qconfig_mapping(self.engine_name),
                                      example_inputs, backend_config=self._backend_config())
            return prepare_fx(model.eval(), get_default_qconfig_mapping(self.engine_name),
                              example_inputs, backend_config=self._backend_config())

    def set_train(self, prepared: nn.Module) -> None:
        prepared.train()

    def set_eval(self, prepared: nn.Module) -> None:
        prepared.eval()

    def convert(self, prepared: nn.Module) -> nn.Module:
        from torch.ao.quantization.quantize_fx import convert_fx

        with _quiet_fx_deprecation(), self.engine():
            return convert_fx(copy.deepcopy(prepared).eval(), backend_config=self._backend_config())


class Pt2eXnnpackFlow(QuantFlow):
    flow = Flow.PT2E_XNNPACK

    def prepare(self, model: nn.Module, example_inputs: tuple, *, qat: bool) -> nn.Module:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e, prepare_qat_pt2e

        model = copy.deepcopy(model).train() if qat else copy.deepcopy(model).eval()
        # Export with a dynamic batch: a graph specialised to batch 1 makes QAT train one sample
        # at a time, which collapses batch norm (seen: 0.994 -> 0.75 accuracy).
        batch = torch.export.Dim("batch", min=1, max=4096)
        batched = tuple(x.expand(2, *x.shape[1:]).contiguous() for x in example_inputs)
        graph = torch.export.export(model, batched, dynamic_shapes=tuple({0: batch} for _ in batched)).module()
        quantizer = XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True, is_qat=qat))
        return prepare_qat_pt2e(graph, quantizer) if qat else prepare_pt2e(graph, quantizer)

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


def flow_for(flow: Flow) -> QuantFlow:
    return {
        Flow.FX_FBGEMM: lambda: FxFlow(Flow.FX_FBGEMM, "fbgemm"),
        Flow.FX_QNNPACK: lambda: FxFlow(Flow.FX_QNNPACK, "qnnpack"),
        Flow.PT2E_XNNPACK: Pt2eXnnpackFlow,
    }[flow]()
