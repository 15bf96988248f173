"""The guide: every public name is in the API reference, the pages the README and mkdocs.yml name exist, and the
README's links into the results page land on a heading.

The strict site build itself (`bash scripts/docs.sh`, run by CI) also checks every link and anchor and renders the
docstrings; these tests need no mkdocs and run in the default suite.
"""

import importlib.util
import re
from pathlib import Path

import yaml

import smart_hf

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_public_name_is_in_the_api_reference():
    assert _hooks().missing_public_names(DOCS, list(smart_hf.__all__)) == []


def test_the_check_finds_a_missing_name():
    assert _hooks().missing_public_names(DOCS, ["SmartConfig", "not_a_public_name"]) == ["not_a_public_name"]


def test_config_fields_tables_list_own_fields_with_their_help():
    import dataclasses

    from smart_hf import SmartConfig, SmartTrainingArguments

    hooks = _hooks()
    table = hooks.fields_table(SmartConfig)
    rows = table.splitlines()[2:]
    assert len(rows) == len([f for f in dataclasses.fields(SmartConfig) if f.init])
    sparsity = next(r for r in rows if r.startswith("| `sparsity` |"))
    help_text = " ".join(SmartConfig.__dataclass_fields__["sparsity"].metadata["help"].split())
    assert help_text.replace("|", "\\|") in sparsity
    own = hooks.fields_table(SmartTrainingArguments)
    assert "`pretrain_steps`" in own and "`learning_rate`" not in own  # inherited TrainingArguments fields left out
    page = hooks.on_page_markdown("a\n<!-- fields: smart_hf.SmartConfig -->\nb")
    assert page.startswith("a\n| field |") and page.endswith("|\nb")


def _nav_pages(nav) -> list[str]:
    pages = []
    for entry in nav:
        for value in entry.values() if isinstance(entry, dict) else [entry]:
            pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_page_is_in_the_navigation_and_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8").replace("!!python", "#"))
    pages = _nav_pages(config["nav"])
    missing = [page for page in pages if not (DOCS / page).is_file()]
    assert not missing, f"mkdocs.yml names pages that do not exist: {missing}"
    unlisted = sorted(p.name for p in DOCS.glob("*.md") if p.name not in pages)
    assert not unlisted, f"pages missing from mkdocs.yml's nav: {unlisted}"


def slug(heading: str) -> str:
    """The anchor GitHub and mkdocs give a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"\s+", "-", text)


def test_readme_links_into_the_guide_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\((docs/[\w./-]+\.md)(?:#([\w-]+))?\)", readme)
    assert links, "the README links to no guide page"
    for page, anchor in links:
        path = ROOT / page
        assert path.is_file(), page
        if anchor:
            headings = re.findall(r"^#+\s+(.*)$", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
            assert anchor in {slug(h) for h in headings}, f"{page}#{anchor}: no such heading"


def test_readme_is_short_and_links_the_results():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    assert "docs/results.md" in readme


def test_results_page_is_short_and_names_existing_files():
    text = (DOCS / "results.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    named = set(re.findall(r"(?:docs/)?results/([\w/.-]+\.(?:json|jsonl))", text))
    named |= {f"quality/{n}" for n in re.findall(r"`quality/([\w.-]+\.jsonl)`", text)}
    assert named
    missing = sorted(n for n in named if not (DOCS / "results" / n).is_file())
    assert not missing, f"docs/results.md names result files that do not exist: {missing}"


def test_every_result_file_is_behind_the_results_page():
    text = (DOCS / "results.md").read_text(encoding="utf-8")
    stale = sorted(
        str(p.relative_to(DOCS / "results"))
        for p in (DOCS / "results").rglob("*")
        if p.is_file() and p.suffix in {".json", ".jsonl"} and str(p.relative_to(DOCS / "results")) not in text
    )
    assert not stale, f"result files no table of docs/results.md uses: {stale}"


def test_version_and_changelog_agree():
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert f"## {smart_hf.__version__}" in changelog
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert f'version = "{smart_hf.__version__}"' in pyproject
