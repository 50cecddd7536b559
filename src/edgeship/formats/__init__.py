"""One module per artifact format (torchscript.py, onnx.py, executorch.py), each with its
exporter and its FormatSpec; `spec_for` finds a target's.

Adding a format: a module here with its exporter and SPEC, its name in FORMATS, its loader in the
device runner (benchmarks/runner.py), and its Format value in targets.py."""

from __future__ import annotations

from torch import nn

from edgeship.formats import executorch, onnx, torchscript
from edgeship.formats.artifact import ExportedArtifact, Exporter, export_atomically
from edgeship.formats.spec import DynamicModel, FormatSpec
from edgeship.targets import Format, Target

FORMATS: dict[Format, FormatSpec] = {spec.format: spec for spec in
                                     (torchscript.SPEC, onnx.SPEC, executorch.SPEC)}


def spec_for(fmt: Format) -> FormatSpec:
    try:
        return FORMATS[fmt]
    except KeyError:
        raise KeyError(f"unknown format {fmt!r}; known: {', '.join(f.value for f in FORMATS)}") from None


def unsupported_layers(model: nn.Module, target: Target) -> dict[str, str]:
    """{module name: reason} for the layers `target`'s runtime cannot run in any precision (its
    int8 artifact and its fp32 twin alike): the target cannot ship this model.

    >>> from edgeship.targets import get_target
    >>> list(unsupported_layers(nn.Sequential(nn.Conv3d(1, 2, 3)), get_target("executorch-fp32")))
    ['0']
    >>> unsupported_layers(nn.Sequential(nn.Conv3d(1, 2, 3)), get_target("onnx-int8"))
    {}
    """
    return spec_for(target.format).unsupported(model)


__all__ = ["FORMATS", "DynamicModel", "ExportedArtifact", "Exporter", "FormatSpec",
           "export_atomically", "spec_for", "unsupported_layers"]
