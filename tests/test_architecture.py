"""The shape of the code: sizes, import directions, no cycles, one source of names.

Import edges are read from the source (``ast``), counting imports inside
functions too, so a lazy import cannot hide a wrong direction or a cycle.
ARCHITECTURE.md states the same rules in words, and is checked against the
tree: its layer lists name every module in the layer :data:`LAYERS` gives it,
and every file or dotted name it gives exists.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tfvae"
CLI = ROOT / "cli"
PAGE = ROOT / "ARCHITECTURE.md"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60

#: Layers from the bottom up; a module may import its own layer or lower ones.
#: (Within a layer, only the cycle check applies.)
LAYERS = [
    # parts with no tfvae dependencies but each other
    {"tfvae", "tfvae._keras", "tfvae.errors", "tfvae.options", "tfvae.files", "tfvae.sampler_noise",
     "tfvae.fused_blocks", "tfvae.runtime", "tfvae.config", "tfvae.sizes", "tfvae.budget"},
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


# ------------------------------------------------------------------ ARCHITECTURE.md


def _page_name(path: Path) -> str:
    """How ARCHITECTURE.md names a module: its path under ``tfvae/`` without ``.py``,
    a package as ``data/``, the root package as ``__init__``; ``cli/...`` for the CLI's."""
    rel = path.relative_to(PACKAGE) if path.is_relative_to(PACKAGE) else path.relative_to(ROOT)
    name = rel.with_suffix("").as_posix()
    if name.endswith("/__init__"):
        name = name[: -len("__init__")]
    return name


def _tree_layers() -> list[set[str]]:
    """Per layer (the CLI last), the page names of the modules the tree has there."""
    layers = [set() for _ in range(len(LAYERS) + 1)]
    for module, path in MODULES.items():
        layers[_layer(module)].add(_page_name(path))
    layers[-1] = {_page_name(path) for path in CLI.rglob("*.py")}
    return layers


def _top_names(module: str) -> set[str]:
    """Names a module defines or imports at its top level (the root's lazy names too)."""
    names = set()
    for node in ast.parse(MODULES[module].read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Name):
                        names.add(leaf.id)
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                    and any(getattr(t, "id", None) == "_LAZY" for t in node.targets)):
                names.update(k.value for k in node.value.keys if isinstance(k, ast.Constant))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _missing_dotted(name: str) -> str | None:
    """Why a dotted name on the page does not exist (None if it does, or is not tfvae's).

    ``tfvae.runs.recorder``, ``tfvae.StackedBernoulliVAE`` and, relative to
    ``tfvae``, ``options.ESTIMATORS``: the longest prefix that is a module, then
    a name that module defines. ``tf.data`` or ``run.history`` are not tfvae's.
    """
    rooted = name.startswith("tfvae.")
    parts = name.split(".")[1:] if rooted else name.split(".")
    for cut in range(len(parts), -1, -1):
        module = ".".join(["tfvae", *parts[:cut]])
        if module in MODULES and (cut or rooted):
            break
    else:
        return None
    rest = parts[cut:]
    if rest and rest[0] not in _top_names(module):
        return f"`{name}`: {module} has no {rest[0]!r}"
    return None


def _page_problems(text: str) -> list[str]:
    """Where ARCHITECTURE.md's text and the tree disagree (empty when they agree)."""
    problems = []
    section = text.split("## Layers, from the bottom", 1)[-1].split("\n## ", 1)[0]
    lists = re.findall(r"^\d+\.\s+\*\*([^*]+)\*\*\s+\(([^)]*)\)", section, re.MULTILINE)
    tree = _tree_layers()
    if len(lists) != len(tree):
        return [f"the page lists {len(lists)} layers, the tree has {len(tree)}"]
    seen = set()
    for (title, listed), expected in zip(lists, tree, strict=True):
        names = re.findall(r"`([^`]+)`", listed)
        if re.sub(r"`[^`]+`|[\s,]", "", listed):
            problems.append(f"{title}: its list holds more than `module` names: {listed!r}")
        problems += [f"{title}: `{n}` is named twice" for n in names if n in seen]
        seen.update(names)
        problems += [f"{title}: `{n}` is not a module of this layer"
                     for n in sorted(set(names) - expected)]
        problems += [f"{title}: the page omits `{n}`" for n in sorted(expected - set(names))]
    for token in sorted(set(re.findall(r"`([^`\s]+)`", text))):
        if re.fullmatch(r"[\w/]+\.py|[a-z_]+(/[a-z_]+)+/?|[a-z_]+/", token):
            candidates = [ROOT / token] + [PACKAGE / token, PACKAGE / f"{token}.py",
                                           ROOT / f"{token}.py"]
            if not any(c.exists() for c in candidates):
                problems.append(f"`{token}`: no such file or package")
        elif re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", token):
            problems.append(_missing_dotted(token))
    return [p for p in problems if p]


def test_architecture_page_names_every_module_in_its_layer():
    problems = _page_problems(PAGE.read_text())
    assert not problems, "ARCHITECTURE.md and the tree disagree:\n" + "\n".join(problems)


def test_architecture_page_check_catches_drift():
    text = PAGE.read_text()
    assert "`runs/recorder`" in text and "`heads`" in text
    stale = (re.sub(r"`runs/recorder`,\s*", "", text, count=1)
             .replace("`heads`", "`networks_old`")
             .replace("`options.ESTIMATORS`", "`options.NO_SUCH_TABLE`")
             .replace("`data/load.py`", "`data/loading.py`")
             .replace("`tfvae.runs.recorder`", "`tfvae.finish`"))
    problems = "\n".join(_page_problems(stale))
    for expected in ("omits `runs/recorder`", "omits `heads`", "`networks_old` is not a module",
                     "NO_SUCH_TABLE", "`data/loading.py`", "`tfvae.finish`"):
        assert expected in problems, problems


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
    from tfvae.runs.families import FAMILIES, POLICIES

    assert tuple(ESTIMATORS) == tuple(options.ESTIMATORS)
    from tfvae.estimators.layered import LAYERED_ESTIMATORS

    assert tuple(LAYERED_ESTIMATORS) == tuple(options.ESTIMATORS)
    assert tuple(STRATEGIES) == tuple(options.STRATEGIES)
    assert tuple(FAMILIES) == tuple(options.MODELS)
    assert tuple(OBSERVATIONS) == tuple(options.LIKELIHOODS)
    assert tuple(GAUSSIAN_SCALES) == tuple(options.OBS_SCALES)
    assert tuple(COVARIANCE_TYPES) == tuple(options.COVARIANCES)
    assert tuple(POLICIES) == tuple(options.PRECISIONS)
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
