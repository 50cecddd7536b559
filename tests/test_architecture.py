"""The shape of src/edgeship, read from its source with `ast`: layers point one way, no import
cycles, no long functions. Nothing is imported; a failure lists every offender.

The layers, bottom to top (a module imports only from its own layer or lower ones):

    0 foundation   errors, cluster, fileio, progress, environment, engines, version, processes, benchmarks.*
    1 data models  targets, config, regression, recipe, factories, metrics, devices.profile, report.schema,
                   data
    2 quantize     quantize.*
    3 formats      formats.*
    4 devices      devices.* (but profile)
    5 gate, report gate.*, report.* (but schema)
    6 pipeline     pipeline.*
    7 interface    cli, the package itself (edgeship/__init__), __main__, examples.*

Run alone: `.venv/bin/python -m pytest -q tests/test_architecture.py`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "edgeship"
MAX_FUNCTION_LINES = 40

# A name matches itself; a name ending in ".*" matches the package and everything under it.
# The most specific match wins (devices.profile is in layer 1, the rest of devices.* in layer 4).
LAYERS: dict[int, tuple[str, ...]] = {
    0: ("edgeship.errors", "edgeship.cluster", "edgeship.fileio", "edgeship.progress", "edgeship.environment",
        "edgeship.engines", "edgeship.version", "edgeship.processes", "edgeship.quiet",
        "edgeship.benchmarks.*"),
    1: ("edgeship.targets", "edgeship.config", "edgeship.regression", "edgeship.recipe",
        "edgeship.factories", "edgeship.metrics", "edgeship.devices.profile", "edgeship.report.schema",
        "edgeship.data"),
    2: ("edgeship.quantize.*",),
    3: ("edgeship.formats.*",),
    4: ("edgeship.devices.*",),
    5: ("edgeship.gate.*", "edgeship.report.*"),
    6: ("edgeship.pipeline.*",),
    7: ("edgeship.cli.*", "edgeship", "edgeship.__main__", "edgeship.examples.*"),
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported edgeship module
    line: int

    def __str__(self) -> str:
        return f"{self.source} → {self.target} (line {self.line})"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


@cache
def tree(name: str) -> ast.Module:
    path = modules()[name]
    return ast.parse(path.read_text(), filename=str(path))


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The module an ImportFrom names, with a relative one resolved against `module`."""
    if not node.level:
        return node.module or ""
    package = module.split(".")
    is_package = modules()[module].name == "__init__.py"
    base = package[:len(package) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(module: str, node: ast.AST) -> list[str]:
    """The edgeship modules one import statement loads (a name that is a submodule counts as it)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "edgeship"]
    if isinstance(node, ast.ImportFrom):
        base = _absolute(module, node)
        if base.split(".")[0] != "edgeship":
            return []
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in modules() else base for a in node.names]
    return []


@cache
def imports() -> tuple[Import, ...]:
    """Every import of an edgeship module in the package, at module level or inside a function."""
    found = []
    for name in modules():
        for node in ast.walk(tree(name)):
            found += [Import(name, t, node.lineno) for t in _targets(name, node) if t != name]
    return tuple(found)


def layer(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (specificity, layer)
    for number, patterns in LAYERS.items():
        for pattern in patterns:
            prefix = pattern.removesuffix(".*")
            exact = module == pattern
            under = pattern.endswith(".*") and (module == prefix or module.startswith(prefix + "."))
            if (exact or under) and (best is None or len(prefix) + exact > best[0]):
                best = (len(prefix) + exact, number)
    return None if best is None else best[1]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _function_lengths() -> list[tuple[str, int]]:
    out = []
    for name, path in modules().items():
        for node in ast.walk(tree(name)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                out.append((f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}", length))
    return out


def _torch_loads_without_weights_only() -> list[str]:
    out = []
    for name, path in modules().items():
        for node in ast.walk(tree(name)):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"
                    and not any(k.arg == "weights_only" and isinstance(k.value, ast.Constant)
                                and k.value.value is True for k in node.keywords)):
                out.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    return out


# --- the tests ------------------------------------------------------------------------------

def test_the_package_is_read():
    assert {"edgeship.cli", "edgeship.recipe", "edgeship.report.schema"} <= set(modules())
    assert any(i.source == "edgeship.cli" for i in imports())


def test_every_module_has_a_layer():
    missing = [m for m in modules() if layer(m) is None]
    assert not missing, "modules in no layer (add them to LAYERS in this file): " + ", ".join(missing)


def test_every_import_points_down_or_across():
    upward = [f"{i}: layer {layer(i.source)} imports layer {layer(i.target)}"
              for i in imports() if None not in (layer(i.source), layer(i.target))
              and layer(i.target) > layer(i.source)]
    assert not upward, "imports from a higher layer:\n  " + "\n  ".join(upward)


def test_the_gate_decides_without_the_report_writers():
    """The report writers show the gate's decision (report may import gate); the gate reads only
    the report's schema."""
    back = [str(i) for i in imports() if i.source.startswith("edgeship.gate")
            and i.target.startswith("edgeship.report") and i.target != "edgeship.report.schema"]
    assert not back, "gate modules importing report writers:\n  " + "\n  ".join(back)


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    for i in imports():
        graph.setdefault(i.source, set()).add(i.target)
    cycles = _cycles(graph)
    assert not cycles, "import cycles (module-level and function-level imports):\n  " + \
        "\n  ".join(" ↔ ".join(c) for c in cycles)


def test_no_function_is_longer_than_40_lines():
    long = [f"{where}: {n} lines" for where, n in _function_lengths() if n > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (def line to last line):\n  " + \
        "\n  ".join(long)


def test_every_torch_load_says_weights_only():
    """A pickle given as weights (a user's weights_path, a run folder from elsewhere) runs its
    payload under torch.load unless the call says weights_only=True: the default also turns off
    when TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 is in the environment, an explicit argument does not."""
    unsafe = _torch_loads_without_weights_only()
    assert not unsafe, "torch.load without weights_only=True:\n  " + "\n  ".join(unsafe)


def test_the_checks_themselves():
    assert layer("edgeship.devices.profile") == 1 and layer("edgeship.devices.ssh") == 4
    assert layer("edgeship.report.schema") == 1 and layer("edgeship.report.html") == 5
    assert layer("edgeship") == 7 and layer("edgeship.gate") == 5 and layer("edgeship.nope") is None
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert layer("edgeship.report") == 5 and layer("edgeship.benchmarks.runner") == 0
