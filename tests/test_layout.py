"""The package's layers: imports only point down, no import cycles, no intra-package imports inside functions, and
the moved modules of 0.1 still import (with a DeprecationWarning). The benchmarks and examples use the public API only.
Functions stay within 60 lines and classes within 200 (config dataclasses aside).

The layer order is docs/architecture.md's; a module may import from its own layer or any layer below it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "smart_hf"

# bottom to top; a module's layer is the first prefix that matches its dotted name
LAYERS = [
    ("smart_hf._version", "smart_hf.constants", "smart_hf._field_checks", "smart_hf.core"),
    ("smart_hf.config", "smart_hf.metadata"),
    ("smart_hf.distributed",),
    (
        "smart_hf.state",
        "smart_hf.budget_groups",
        "smart_hf.layers",
        "smart_hf.scores",
        "smart_hf.fisher",
        "smart_hf.coupling",
        "smart_hf.coupled_owners",
        "smart_hf.latency",
    ),
    ("smart_hf.report",),
    ("smart_hf.inject", "smart_hf.lifecycle", "smart_hf.stages"),
    ("smart_hf.slim",),
    ("smart_hf.artifact",),
    ("smart_hf.integrations",),
    ("smart_hf.training",),
    ("smart_hf.demo_data",),  # offline demo data for the CLI, examples and benchmarks; imports no smart_hf module
    ("smart_hf.cli",),
    ("smart_hf",),  # the package root re-exports everything
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _layer(module: str) -> int:
    for index, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes if p != "smart_hf"):
            return index
    if module == "smart_hf":
        return len(LAYERS) - 1
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py; add it to LAYERS")


def _imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(imported smart_hf module, inside a function?) for every smart_hf import of a module."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.startswith("smart_hf"):
                    for alias in child.names:  # `from . import x` may import a submodule
                        sub = f"{target}.{alias.name}"
                        found.append((sub if sub in MODULES else target, in_function))
            elif isinstance(child, ast.Import):
                found.extend((a.name, in_function) for a in child.names if a.name.startswith("smart_hf"))
            visit(child, inner)

    visit(tree, False)
    return found


MODULES = _modules()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down_and_sit_at_module_level(name):
    problems = []
    for target, in_function in _imports(name, MODULES[name]):
        if in_function:
            problems.append(f"imports {target} inside a function (move it to the top; a cycle means a layer is wrong)")
        elif _layer(target) > _layer(name):
            problems.append(f"imports {target}, which is in a higher layer")
    assert not problems, f"{name}: " + "; ".join(problems)


def test_no_import_cycles():
    graph = {
        name: {t for t, _ in _imports(name, path) if t in MODULES and t != name} for name, path in MODULES.items()
    }
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


# Lines from the first decorator to the last line, docstring included (the developer guide's sizes).
MAX_LINES = {"function": 60, "class": 200}
# Allowed to be longer, with the size they have; an entry that fits again must go. Config dataclasses hold one
# field per option.
SIZE_EXCEPTIONS = {
    "smart_hf.config.SmartConfig": 383,  # a config dataclass: fields with their help text
}


def oversized(source: str, module: str) -> dict[str, int]:
    """``{module.qualified.name: lines}`` of every function over ``MAX_LINES["function"]`` lines and class over
    ``MAX_LINES["class"]`` in ``source`` (nested ones too)."""
    found = {}

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}.{child.name}"
                lines = child.end_lineno - min([child.lineno] + [d.lineno for d in child.decorator_list]) + 1
                if lines > MAX_LINES["class" if isinstance(child, ast.ClassDef) else "function"]:
                    found[name] = lines
                visit(child, name)

    visit(ast.parse(source), module)
    return found


def test_functions_and_classes_stay_small():
    found = {}
    for name, path in MODULES.items():
        found.update(oversized(path.read_text(), name))
    new = {name: lines for name, lines in found.items() if name not in SIZE_EXCEPTIONS}
    assert not new, f"split these by job (functions <= 60 lines, classes <= 200): {new}"
    fits = sorted(set(SIZE_EXCEPTIONS) - set(found))
    assert not fits, f"these fit now: remove them from SIZE_EXCEPTIONS: {fits}"
    grown = {n: found[n] for n in SIZE_EXCEPTIONS if n in found and found[n] > SIZE_EXCEPTIONS[n]}
    assert not grown, f"these grew past their recorded size in SIZE_EXCEPTIONS: {grown}"


def test_the_size_check_counts_decorators_docstrings_and_nested_functions():
    body = "\n".join(f"    x{i} = {i}" for i in range(58))  # with decorator, def and docstring: 61 lines
    source = f'@decorator\ndef long():\n    """Doc."""\n{body}\n\ndef short():\n    pass\n'
    assert oversized(source, "m") == {"m.long": 61}
    nested = "class Big:\n" + "\n".join(f"    def f{i}(self):\n        return {i}" for i in range(100))
    assert oversized(nested, "m") == {"m.Big": 201}


def test_test_folders_mirror_the_package():
    """A test folder is named after the subpackage it tests (tests/core for smart_hf/core, ...); the tests of a
    top-level module and the cross-cutting ones sit in tests/ itself."""
    subpackages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    folders = {p.name for p in Path(__file__).resolve().parent.iterdir() if (p / "__init__.py").is_file()}
    assert folders and folders <= subpackages, f"test folders without a smart_hf subpackage: {folders - subpackages}"


@pytest.mark.slow  # one interpreter per module, ~3 s each (transformers): minutes
def test_every_module_imports_alone_in_a_fresh_interpreter():
    """Each module imported first in its own interpreter: a hidden cycle or a missing import would fail here
    (the AST checks above are the fast guarantee; this one runs the imports)."""
    names = sorted(n for n in MODULES if n != "smart_hf")
    script = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    for name in names:  # one interpreter per module: the first import of each is the one that can fail
        proc = subprocess.run(
            [sys.executable, "-W", "error::DeprecationWarning", "-c", script, name],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, f"{name}:\n{proc.stderr[-2000:]}"


def test_public_api_at_the_top_level():
    import smart_hf

    for name in smart_hf.__all__:
        assert getattr(smart_hf, name) is not None
    from smart_hf import SmartCallback, SmartConfig, SmartTrainer, SmartTrainingArguments  # noqa: F401


# ----------------------------------------------------------------------------------------------------------------
# The benchmarks and examples use what a user can use: names in `smart_hf.__all__` and the public modules below.

REPO = PACKAGE.parent
PUBLIC_MODULES = ("smart_hf.demo_data", "smart_hf.integrations.peft", "smart_hf.latency", "smart_hf.slim")  # their `__all__`
CORE_PACKAGE = "smart_hf.core"  # its modules' public pure functions


def _public_name(module: str, name: str) -> bool:
    """Whether ``module.name`` is public API (``name`` may also be an allowed submodule)."""
    if module == "smart_hf" and name in importlib.import_module("smart_hf").__all__:  # `__version__` included
        return True
    if name.startswith("_"):
        return False
    if _allowed_module(f"{module}.{name}") or _parent_of_allowed(f"{module}.{name}"):
        return True
    if module in PUBLIC_MODULES:
        return name in importlib.import_module(module).__all__
    if module.startswith(CORE_PACKAGE + ".") and _allowed_module(module):
        value = getattr(importlib.import_module(module), name, None)
        return inspect.isfunction(value) and value.__module__ == module
    return False


def _allowed_module(module: str) -> bool:
    if module == "smart_hf" or module in PUBLIC_MODULES:
        return True
    tail = module.removeprefix(CORE_PACKAGE + ".")
    return module.startswith(CORE_PACKAGE + ".") and "." not in tail and not tail.startswith("_") and (
        importlib.util.find_spec(module) is not None
    )


def _parent_of_allowed(module: str) -> bool:
    """``smart_hf.integrations`` / ``smart_hf.core``: packages one may only pass through to a public module."""
    return module in ("smart_hf.integrations", CORE_PACKAGE)


def public_api_violations(source: str) -> list[str]:
    """Every use of ``smart_hf`` in ``source`` that is not public API: imports of other modules or of names with a
    leading underscore, and attributes of an imported ``smart_hf`` module that are not public (``sh._x``,
    ``sh.state``)."""
    tree = ast.parse(source)
    aliases: dict[str, str] = {}  # local name -> the smart_hf module it is bound to
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] != "smart_hf":
                    continue
                if not (_allowed_module(alias.name) or _parent_of_allowed(alias.name)):
                    problems.append(f"line {node.lineno}: import {alias.name}")
                aliases[alias.asname or "smart_hf"] = alias.name if alias.asname else "smart_hf"
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "smart_hf":
            if not (_allowed_module(node.module) or _parent_of_allowed(node.module)):
                names = ", ".join(alias.name for alias in node.names)
                problems.append(f"line {node.lineno}: from {node.module} import {names}")
                continue
            for alias in node.names:
                if not _public_name(node.module, alias.name):
                    problems.append(f"line {node.lineno}: from {node.module} import {alias.name}")
                elif _allowed_module(f"{node.module}.{alias.name}"):
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            module = aliases[node.value.id]
            if not _public_name(module, node.attr):
                problems.append(f"line {node.lineno}: {node.value.id}.{node.attr} ({module}.{node.attr})")
    return problems


SCRIPTS = sorted(
    str(path.relative_to(REPO)) for folder in ("benchmarks", "examples") for path in (REPO / folder).rglob("*.py")
)


@pytest.mark.parametrize("path", SCRIPTS)
def test_benchmarks_and_examples_use_only_the_public_api(path):
    problems = public_api_violations((REPO / path).read_text())
    assert not problems, f"{path} uses smart_hf beyond its public API: " + "; ".join(problems)


def test_the_public_api_rule_tells_public_from_private():
    public = """
import smart_hf
import smart_hf as sh
import smart_hf.demo_data
from smart_hf import SmartConfig, prepare_model
from smart_hf.demo_data import load_digits_splits, minilm_path
from smart_hf.integrations.peft import get_peft_model
from smart_hf.slim import find_ffn_pairs
from smart_hf.core.topk import soft_topk
from smart_hf.core import schedule
sh.prepare_model(model, sh.SmartConfig())
schedule.auto_temperature(f, 0.05)
"""
    assert public_api_violations(public) == []
    private = {
        "from smart_hf.cli.data import load_digits_splits": "smart_hf.cli.data",
        "import smart_hf.state": "smart_hf.state",
        "from smart_hf import state": "state",
        "from smart_hf._aliases import MOVED": "smart_hf._aliases",
        "from smart_hf.core.topk import _soft_topk_rows": "_soft_topk_rows",
        "from smart_hf.core.granularity import UnitLayout": "UnitLayout",  # a class, not a pure function
        "from smart_hf.slim.heads import find_attention_blocks": "smart_hf.slim.heads",
        "import smart_hf as sh\nsh.lifecycle.harden(m)": "sh.lifecycle",
        "import smart_hf as sh\nsh._install_moved_module_aliases()": "sh._install",
        "from smart_hf.core import topk\ntopk._check(x)": "topk._check",
    }
    for source, shown in private.items():
        problems = public_api_violations(source)
        assert len(problems) == 1 and shown in problems[0], (source, problems)
