"""The shape of the code: sizes, import directions, no cycles, one source of names.

Import edges are read from the source (``ast``), counting imports inside
functions too, so a lazy import cannot hide a wrong direction or a cycle.
ARCHITECTURE.md states the same rules in words.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tfvae"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60

#: Layers from the bottom up; a module may import its own layer or lower ones.
#: (Within a layer, only the cycle check applies.)
LAYERS = [
    # parts with no tfvae dependencies but each other
    {"tfvae", "tfvae._keras", "tfvae.errors", "tfvae.options", "tfvae.files", "tfvae.sampler_noise",
     "tfvae.fused_blocks", "tfvae.runtime", "tfvae.config"},
    # data, networks, objectives, estimators, distribution, the mixture sampler
    {"tfvae.data", "tfvae.networks", "tfvae.heads", "tfvae.distributions", "tfvae.objectives",
     "tfvae.distribute", "tfvae.estimators", "tfvae.estimators.layered", "tfvae.gmm"},
    {"tfvae.models"},
    {"tfvae.evaluation", "tfvae.diagnostics", "tfvae.figures"},
    {"tfvae.runs"},
    {"tfvae.callbacks", "tfvae.final_evaluation", "tfvae.export"},
    {"tfvae.training"},
]
#: Imports forbidden even when the layers would allow them.
FORBIDDEN = [
    ("tfvae.export", "tfvae.training"),
    ("tfvae.export", "tfvae.callbacks"),
    ("tfvae.export", "tfvae.final_evaluation"),
    ("tfvae.gmm", "tfvae.runs"),
    ("tfvae.models", "tfvae.data"),
]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _target(name: str) -> str | None:
    """The tfvae module an imported dotted name refers to (longest known prefix)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            # ``from a.b import c``: the submodule a.b.c if there is one, else a.b.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                     for alias in node.names]
        else:
            continue
        for name in names:
            if name.startswith("tfvae"):
                target = _target(name)
                if target and target != module:
                    found.add(target)
    return found


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _layer(module: str) -> int:
    for rank, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer if top != "tfvae"):
            return rank
    assert module == "tfvae", f"{module} is in no layer: add it to LAYERS and ARCHITECTURE.md"
    return 0


def _within(module: str, top: str) -> bool:
    return module == top or module.startswith(top + ".")


def test_every_module_is_small_and_every_function_short():
    long_functions = []
    for module, path in MODULES.items():
        source = path.read_text()
        lines = len(source.splitlines())
        assert lines <= MAX_MODULE_LINES, f"{path} has {lines} lines: split it along its concerns"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{module}.{node.name}: {length} lines")
    assert not long_functions, long_functions


def test_imports_point_down_the_layers():
    wrong = []
    for module, targets in GRAPH.items():
        for target in targets:
            if target == "tfvae":
                continue  # the root package imports nothing (checked below)
            if _layer(target) > _layer(module):
                wrong.append(f"{module} -> {target}")
            for low, high in FORBIDDEN:
                if _within(module, low) and _within(target, high):
                    wrong.append(f"{module} -> {target} (forbidden)")
    assert not wrong, wrong
    assert GRAPH["tfvae"] == set(), "tfvae/__init__ must import its names lazily"


def test_there_is_no_import_cycle():
    # Tarjan's strongly connected components over every module-level and lazy edge.
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not cycles, cycles


def test_names_exist_once_options_config_cli_and_registries_agree():
    from click.testing import CliRunner
    from tfvae_cli.main import cli

    from tfvae import options
    from tfvae.config import Config
    from tfvae.distribute import STRATEGIES
    from tfvae.estimators import ESTIMATORS
    from tfvae.gmm import COVARIANCE_TYPES
    from tfvae.heads import GAUSSIAN_SCALES, OBSERVATIONS
    from tfvae.runs.families import FAMILIES

    assert tuple(ESTIMATORS) == tuple(options.ESTIMATORS)
    from tfvae.estimators.layered import LAYERED_ESTIMATORS

    assert tuple(LAYERED_ESTIMATORS) == tuple(options.ESTIMATORS)
    assert tuple(STRATEGIES) == tuple(options.STRATEGIES)
    assert tuple(FAMILIES) == tuple(options.MODELS)
    assert tuple(OBSERVATIONS) == tuple(options.LIKELIHOODS)
    assert tuple(GAUSSIAN_SCALES) == tuple(options.OBS_SCALES)
    assert tuple(COVARIANCE_TYPES) == tuple(options.COVARIANCES)
    params = {p.name: p for p in cli.commands["train"].params}
    for field in dataclasses.fields(Config):
        if not field.metadata["cli"]:
            assert field.name not in params
            continue
        param = params[field.name]
        table = field.metadata["choices"]
        if table is not None:
            assert tuple(param.type.choices) == tuple(table), field.name
        default = field.default
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        elif field.metadata["kind"] in ("str", "shape") and default is not None:
            default = str(default)
        assert param.default == default, field.name
    # What the CLI passes, Config takes: the defaults make the default Config.
    result = CliRunner().invoke(cli, ["train", "--help"])
    assert result.exit_code == 0 and "--latent-dim" in result.output


@pytest.mark.parametrize("module", ["tfvae.data", "tfvae.export", "tfvae.runs", "tfvae.config",
                                    "tfvae.runs.layout", "tfvae.export.manifest"])
def test_light_modules_do_not_import_tensorflow(module):
    import subprocess
    import sys

    code = f"import sys, {module}; print('tensorflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr


def test_importing_tensorflow_pauses_the_collector_and_restores_it():
    import gc
    import importlib

    import tfvae._keras as module

    was = gc.isenabled()
    try:
        for state in (True, False):
            (gc.enable if state else gc.disable)()
            importlib.reload(module)
            assert gc.isenabled() is state
    finally:
        (gc.enable if was else gc.disable)()
