"""mkdocs build hooks: the API reference documents every public name, and lists the config fields.

Every name in ``smart_hf.__all__`` must appear on an API page as a ``::: smart_hf....<name>`` directive (or, for
dunder names, as ``smart_hf.<name>`` in the text); a missing one fails the build, strict or not. A line
``<!-- fields: smart_hf.SmartConfig -->`` becomes a table of the dataclass's own fields: name, type, default and
the ``metadata["help"]`` text that ``HfArgumentParser`` shows too.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from pathlib import Path

FIELDS_MARKER = re.compile(r"^<!-- fields: ([\w.]+) -->$", flags=re.MULTILINE)

API_PAGES = ("api.md",)


def missing_public_names(docs_dir: Path, public: list[str]) -> list[str]:
    """The names of ``public`` that no API page documents.

    Args:
        docs_dir: the folder holding the guide's pages.
        public: the public names, e.g. ``smart_hf.__all__``.

    Returns:
        The undocumented names, in the order given.
    """
    text = "\n".join((docs_dir / page).read_text(encoding="utf-8") for page in API_PAGES)
    documented = set(re.findall(r"^:::\s+smart_hf(?:\.\w+)*\.(\w+)\s*$", text, flags=re.MULTILINE))
    documented |= set(re.findall(r"smart_hf\.(__\w+__)", text))
    return [name for name in public if name not in documented]


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        return f"`{field.default!r}`"
    if field.default_factory is not dataclasses.MISSING:
        return f"`{field.default_factory()!r}`"
    return "required"


def fields_table(cls: type) -> str:
    """A markdown table of the dataclass ``cls``'s own fields (not those it inherits from a parent dataclass).

    Args:
        cls: a dataclass whose fields carry ``metadata={"help": ...}``.

    Returns:
        The table: field, type, default, help.
    """
    inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)}
    rows = ["| field | type | default | what it does |", "|---|---|---|---|"]
    for field in dataclasses.fields(cls):
        if field.name in inherited or not field.init:
            continue
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
        text = " ".join(str(field.metadata.get("help", "")).split()).replace("|", "\\|")
        rows.append(f"| `{field.name}` | `{kind}` | {_default(field)} | {text} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, **kwargs) -> str:
    def table(match: re.Match) -> str:
        module, _, name = match.group(1).rpartition(".")
        return fields_table(getattr(importlib.import_module(module), name))

    return FIELDS_MARKER.sub(table, markdown)


def on_config(config, **kwargs):
    import smart_hf

    missing = missing_public_names(Path(config["docs_dir"]), list(smart_hf.__all__))
    if missing:
        from mkdocs.exceptions import PluginError

        raise PluginError(
            f"the API reference (docs/{', docs/'.join(API_PAGES)}) does not document {missing}: add a "
            "'::: smart_hf.<name>' line for each"
        )
    return config
