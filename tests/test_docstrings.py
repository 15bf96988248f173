"""Every public callable documents its arguments and its result in Google style, as the API reference renders them.

Public: the names in ``smart_hf.__all__`` and in the ``__all__`` of the public modules, and the public methods of
the public classes defined by smart_hf (inherited Trainer methods that smart_hf does not override are the Trainer's
to document). A callable with parameters needs an ``Args:`` section; one that returns a value (a return annotation
other than ``None``, or, unannotated, a ``return <value>`` in its body) needs ``Returns:`` (``Yields:`` for a
generator). A dataclass documents its fields with ``metadata={"help": ...}`` instead of ``Args:``.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import textwrap
from pathlib import Path

PUBLIC_MODULES = ("smart_hf", "smart_hf.demo_data", "smart_hf.integrations.peft", "smart_hf.latency", "smart_hf.slim")
ROOT = Path(__file__).resolve().parents[1]
NO_RESULT = {"None", "NoReturn", "Never", "typing.NoReturn", "typing.Never"}


def _sections(doc: str | None) -> set[str]:
    """The Google-style section names of a docstring (``Args``, ``Returns``, ...)."""
    lines = inspect.cleandoc(doc or "").splitlines()
    return {line.strip()[:-1] for line in lines if line.strip().endswith(":") and line.strip()[:-1].isalpha()}


def _own_body_returns(func) -> tuple[bool, bool]:
    """(returns a value?, yields?) read from ``func``'s source, nested functions and classes left out."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(func)))
    except (OSError, TypeError, SyntaxError):
        return False, False
    node = tree.body[0]
    returns = yields = False
    stack = list(ast.iter_child_nodes(node))
    while stack:
        child = stack.pop()
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(child, ast.Return) and child.value is not None:
            returns |= not (isinstance(child.value, ast.Constant) and child.value.value is None)
        yields |= isinstance(child, (ast.Yield, ast.YieldFrom))
        stack.extend(ast.iter_child_nodes(child))
    return returns, yields


def _returns_value(func) -> bool:
    annotation = inspect.signature(func).return_annotation
    if annotation is inspect.Signature.empty:
        returns, yields = _own_body_returns(func)
        return returns or yields
    if annotation is None:
        return False
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
    return text not in NO_RESULT


def _parameters(func, bound: bool) -> list[str]:
    names = list(inspect.signature(func).parameters)
    return names[1:] if bound and names and names[0] in ("self", "cls") else names


def function_offenders(name: str, func, bound: bool = False, doc: str | None = None) -> list[str]:
    """``"<name>: no Args:"`` / ``"<name>: no Returns:"`` for each section ``func``'s docstring lacks.

    Args:
        name: the name to report.
        func: the function (or method, as found on its class).
        bound: ``func`` is a method: its ``self`` / ``cls`` is no parameter to document.
        doc: the docstring to check; default ``func``'s own.

    Returns:
        The offences, empty when the docstring is complete.
    """
    func = inspect.unwrap(func)
    sections = _sections(func.__doc__ if doc is None else doc)
    found = []
    if _parameters(func, bound) and "Args" not in sections:
        found.append(f"{name}: no Args:")
    if _returns_value(func) and not sections & {"Returns", "Yields"}:
        found.append(f"{name}: no Returns:")
    return found


def _is_own(obj) -> bool:
    return getattr(obj, "__module__", "").startswith("smart_hf")


def class_offenders(name: str, cls: type, own=None) -> list[str]:
    """The offences of a public class: its constructor (documented on the class, or a dataclass's field help) and
    every public method that a smart_hf class in its MRO defines.

    Args:
        name: the name to report.
        cls: the class.
        own: which classes of the MRO count as smart_hf's (a predicate); default: those of smart_hf modules.

    Returns:
        The offences, empty when every docstring is complete.
    """
    own = own or _is_own
    found = []
    constructor = next(klass for klass in cls.__mro__ if "__init__" in vars(klass))
    if dataclasses.is_dataclass(cls):
        foreign = {f.name for k in cls.__mro__ if dataclasses.is_dataclass(k) and not own(k) for f in dataclasses.fields(k)}
        fields = [f for f in dataclasses.fields(cls) if f.init and f.name not in foreign]
        found += [f"{name}.{f.name}: no metadata help" for f in fields if not f.metadata.get("help")]
    elif own(constructor):
        doc = "\n".join(d for d in (cls.__doc__, cls.__init__.__doc__) if d)
        found += function_offenders(name, cls.__init__, bound=True, doc=doc)
    seen = set()
    for klass in cls.__mro__:
        for attr, value in vars(klass).items():
            if attr.startswith("_") or attr in seen:
                continue
            seen.add(attr)
            if not own(klass):
                continue
            func = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
            if inspect.isfunction(func):
                found += function_offenders(f"{name}.{attr}", func, bound=not isinstance(value, staticmethod))
    return found


def _source(value) -> str:
    path = Path(inspect.getsourcefile(inspect.unwrap(value)))
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def public_callables() -> dict[str, object]:
    """Every public callable that smart_hf defines, by its dotted public name."""
    out = {}
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            value = getattr(module, name)
            if callable(value) and _is_own(value):
                out[f"{module_name}.{name}"] = value
    return out


def test_every_public_callable_documents_its_arguments_and_result():
    callables = public_callables()
    assert "smart_hf.SmartTrainer" in callables and "smart_hf.latency.predicted_seconds" in callables
    offenders = []
    seen = set()
    for name, value in sorted(callables.items()):
        if id(value) in seen:  # re-exported under several public names: reported once
            continue
        seen.add(id(value))
        found = class_offenders(name, value) if inspect.isclass(value) else function_offenders(name, value)
        offenders += [f"{o} ({_source(value)})" for o in found]
    assert not offenders, "public callables whose docstrings lack a section:\n" + "\n".join(offenders)


# --- the check itself can fail ---


def _undocumented(x: int, y: int = 2) -> int:
    """Adds."""
    return x + y


def _documented(x: int) -> int:
    """Doubles.

    Args:
        x: a number.

    Returns:
        ``2 * x``.
    """
    return 2 * x


def _unannotated(x):
    """Args:
    x: a number.
    """
    return x


def _generator(n: int):
    """Counts.

    Args:
        n: how far.

    Yields:
        ``0 .. n - 1``.
    """
    yield from range(n)


class _Widget:
    """A widget without Args for its constructor."""

    def __init__(self, size: int) -> None:
        self.size = size

    def grow(self, by: int) -> None:
        """Grows.

        Args:
            by: how much.
        """
        self.size += by

    def area(self) -> int:
        """The area, with no Returns section."""
        return self.size**2


def test_the_check_names_each_missing_section():
    assert function_offenders("f", _undocumented) == ["f: no Args:", "f: no Returns:"]
    assert function_offenders("f", _documented) == []
    assert function_offenders("f", _unannotated) == ["f: no Returns:"]  # unannotated: the body's return counts
    assert function_offenders("f", _generator) == []
    assert function_offenders("f", _Widget.grow, bound=True) == []


def test_the_check_covers_constructors_and_methods():
    assert class_offenders("W", _Widget, own=lambda klass: klass is _Widget) == ["W: no Args:", "W.area: no Returns:"]
    assert class_offenders("W", _Widget) == []  # a class smart_hf does not define is not checked
