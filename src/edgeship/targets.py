"""The deployable artifact kinds. Names are stable: reports that CI parses carry them.

A target is data: its format (whose FormatSpec in edgeship.formats says how to export, load and
run it), its int8 kernel library, its precision, the quantization flow that makes it and its fp32
twin. Adding a target of a known format is one line in _ALL."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Format(str, Enum):
    TORCHSCRIPT = "torchscript"
    ONNX = "onnx"
    EXECUTORCH = "executorch"


class Flow(str, Enum):
    """A quantization flow: how a float model becomes an int8 one for a family of kernels."""

    FX_FBGEMM = "fx-fbgemm"  # torch.ao FX graph mode, fbgemm backend config (x86)
    FX_QNNPACK = "fx-qnnpack"  # torch.ao FX graph mode, qnnpack backend config (ARM)
    PT2E_XNNPACK = "pt2e-xnnpack"  # torchao PT2E with the XNNPACK quantizer (ExecuTorch)
    # PT2E fine-tuning under ONNX Runtime's int8 config; ONNX Runtime's quantize_static at export
    ORT_QDQ = "ort-qdq"


class Precision(str, Enum):
    INT8 = "int8"
    FP32 = "fp32"


@dataclass(frozen=True)
class Target:
    name: str
    format: Format
    engine: str
    precision: Precision
    flow: Flow | None
    twin: str  # the fp32 baseline every int8 figure is compared with; itself for fp32 targets

    @property
    def is_int8(self) -> bool:
        return self.precision is Precision.INT8


_ALL = [
    Target("torchscript-fbgemm", Format.TORCHSCRIPT, "fbgemm", Precision.INT8, Flow.FX_FBGEMM,
           "torchscript-fp32"),
    Target("torchscript-qnnpack", Format.TORCHSCRIPT, "qnnpack", Precision.INT8, Flow.FX_QNNPACK,
           "torchscript-fp32"),
    Target("onnx-int8", Format.ONNX, "onnxruntime", Precision.INT8, Flow.ORT_QDQ,
           "onnx-fp32"),
    Target("executorch-xnnpack", Format.EXECUTORCH, "xnnpack", Precision.INT8, Flow.PT2E_XNNPACK,
           "executorch-fp32"),
    Target("torchscript-fp32", Format.TORCHSCRIPT, "torch", Precision.FP32, None,
           "torchscript-fp32"),
    Target("onnx-fp32", Format.ONNX, "onnxruntime", Precision.FP32, None, "onnx-fp32"),
    Target("executorch-fp32", Format.EXECUTORCH, "xnnpack", Precision.FP32, None,
           "executorch-fp32"),
]

TARGETS: dict[str, Target] = {t.name: t for t in _ALL}


def known_targets() -> str:
    return ", ".join(sorted(TARGETS))


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise KeyError(f"unknown target {name!r}; known: {known_targets()}") from None


def with_twins(names: list[str]) -> list[Target]:
    """The named targets followed by the fp32 twins they need, each once, in a stable order."""
    chosen = [get_target(n) for n in names]
    for twin in [get_target(t.twin) for t in chosen]:
        if twin not in chosen:
            chosen.append(twin)
    return chosen
