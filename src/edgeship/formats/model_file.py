"""A model file edgeship did not make (`edgeship bench MODEL`): its format from the suffix, the
files it needs, whether it is whole, and its inputs' shapes and dtypes from its own metadata
where the format keeps them (ONNX graph inputs, an ExecuTorch method's tensor metadata;
TorchScript keeps none), else from `--input NAME:1x3x224x224:float32`."""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edgeship.benchmarks.runner import BadArtifact, check_pte, onnx_problem
from edgeship.errors import UserError
from edgeship.targets import Format

SUFFIXES = {".onnx": Format.ONNX, ".pte": Format.EXECUTORCH, ".pt": Format.TORCHSCRIPT}
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
# ExecuTorch's ScalarType codes (c10/core/ScalarType.h) of the dtypes above
_ET_DTYPES = {6: "float32", 5: "float16", 7: "float64", 4: "int64", 3: "int32", 2: "int16",
              1: "int8", 0: "uint8", 11: "bool"}
_INPUT = re.compile(r"^(?:(?P<name>[^:]+):)?(?P<shape>\d+(?:x\d+)*)(?::(?P<dtype>[a-z0-9]+))?$")


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def __str__(self) -> str:
        return f"{self.name}:{'x'.join(map(str, self.shape))}:{self.dtype}"

    def batched(self, batch: int) -> InputSpec:
        return replace(self, shape=(batch, *self.shape[1:]))


def parse_input(text: str, index: int) -> InputSpec:
    """`NAME:1x3x224x224:float32`, `1x3x224x224:int64` or `1x3x224x224` (float32)."""
    match = _INPUT.match(text.strip())
    dtype = match and (match["dtype"] or "float32")
    if not match or dtype not in DTYPES or 0 in tuple(map(int, match["shape"].split("x"))):
        raise UserError(f"--input {text!r}: expected NAME:1x3x224x224:float32 (NAME and dtype "
                        f"optional; dims positive; dtypes: {', '.join(DTYPES)})")
    return InputSpec(match["name"] or f"input_{index}", tuple(map(int, match["shape"].split("x"))), dtype)


def parse_input_sets(texts: list[str]) -> list[list[InputSpec]]:
    """`--input` values as input sets: each value is the next input, and a name given again
    starts another set (a shape sweep), which must name the same inputs in the same order.

    >>> [[str(s) for s in set_] for set_ in parse_input_sets(["x:1x8", "x:4x8"])]
    [['x:1x8:float32'], ['x:4x8:float32']]
    """
    sets: list[list[InputSpec]] = []
    for index, text in enumerate(texts):
        spec = parse_input(text, index)
        if not sets or spec.name in {s.name for s in sets[-1]}:
            sets.append([])
        sets[-1].append(spec)
    names = [s.name for s in sets[0]] if sets else []
    for other in sets[1:]:
        if [s.name for s in other] != names:
            raise UserError(f"--input: every set of a sweep names the same inputs in the same order "
                            f"({', '.join(names)}); got {', '.join(s.name for s in other)}")
    return sets


@dataclass(frozen=True)
class ModelFile:
    path: Path
    format: Format
    files: tuple[Path, ...]  # the file and what it needs beside it (ONNX external data)
    inputs: list[InputSpec] | None  # from the file's metadata; None: it does not say
    why_no_inputs: str = ""

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def _onnx(path: Path) -> ModelFile:
    import onnx

    problem = onnx_problem(str(path))
    if problem:
        raise BadArtifact(problem)
    model = onnx.load(str(path), load_external_data=False)
    external = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    files = (path, *(path.parent / name for name in sorted(external)))
    initializers = {t.name for t in model.graph.initializer}
    inputs, why = [], ""
    for i in (x for x in model.graph.input if x.name not in initializers):
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in i.type.tensor_type.shape.dim]
        symbolic = [d for d in dims if not isinstance(d, int) or d <= 0]
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)).name
        if symbolic:
            why = why or f"input {i.name!r} has dims {dims} (symbolic {symbolic[0]!r})"
        inputs.append(InputSpec(i.name, tuple(d if isinstance(d, int) else 0 for d in dims), dtype))
    return ModelFile(path, Format.ONNX, files, None if why else inputs, why)


def _executorch(path: Path) -> ModelFile:
    check_pte(str(path))
    from executorch.runtime import Runtime

    try:
        meta = Runtime.get().load_program(str(path)).metadata("forward")
    except Exception as e:  # noqa: BLE001 - the runtime's own errors: a file it cannot load
        raise BadArtifact(f"ExecuTorch cannot load its method 'forward': {str(e).splitlines()[0]}") from None
    inputs = []
    for i in range(meta.num_inputs()):
        info = meta.input_tensor_meta(i)
        inputs.append(InputSpec(f"input_{i}", tuple(info.sizes()), _ET_DTYPES.get(int(info.dtype()), "float32")))
    return ModelFile(path, Format.EXECUTORCH, (path,), inputs)


def _torchscript(path: Path) -> ModelFile:
    if not zipfile.is_zipfile(path):
        raise BadArtifact("not a TorchScript archive: not a zip file (truncated, or another format)")
    return ModelFile(path, Format.TORCHSCRIPT, (path,), None,
                     "a TorchScript file keeps no input shapes")


_OPENERS = {Format.ONNX: _onnx, Format.EXECUTORCH: _executorch, Format.TORCHSCRIPT: _torchscript}


def open_model_file(path: Path) -> ModelFile:
    """The model file, checked to be whole before any runtime is handed it (a runtime may abort
    the process on a corrupt file): UserError naming the file and what is wrong."""
    if path.suffix not in SUFFIXES:
        raise UserError(f"{path}: unknown model file suffix {path.suffix!r}; known: "
                        f"{', '.join(SUFFIXES)} (ONNX, ExecuTorch, TorchScript)")
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        found = _OPENERS[SUFFIXES[path.suffix]](path)
    except BadArtifact as e:
        raise UserError(f"{path}: {e}") from None
    missing = [str(f) for f in found.files if not f.is_file()]
    if missing:
        raise UserError(f"{path}: its external data is missing: {', '.join(missing)}")
    return found


def random_inputs(specs: list[InputSpec], seed: int = 0) -> list[np.ndarray]:
    """Inputs of the given shapes and dtypes: standard normal floats, small non-negative integers
    (valid token ids or indices for most models), random booleans."""
    rng = np.random.default_rng(seed)
    out = []
    for spec in specs:
        if spec.dtype.startswith("float"):
            out.append(rng.standard_normal(spec.shape).astype(spec.dtype))
        elif spec.dtype == "bool":
            out.append(rng.random(spec.shape) < 0.5)
        else:
            out.append(rng.integers(0, 2, spec.shape).astype(spec.dtype))
    return out
