"""mkdocs build hook: the API reference documents every public name.

Every name in ``smart_hf.__all__`` must appear on an API page as a ``::: smart_hf....<name>`` directive (or, for
dunder names, as ``smart_hf.<name>`` in the text); a missing one fails the build, strict or not.
"""

from __future__ import annotations

import re
from pathlib import Path

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
