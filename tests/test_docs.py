"""The README and docs/: a short front door, and every link between them leads somewhere."""
from __future__ import annotations

import re

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # no headings inside code blocks
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked offline
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists() or (anchor and path.suffix == ".md" and anchor not in anchors(path)):
            broken.append(target)
    assert broken == []


def test_readme_is_a_short_front_door_linking_every_doc():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for doc in PAGES[1:]:
        assert f"(docs/{doc.name})" in readme, f"README does not link docs/{doc.name}"


def test_the_parameters_table_is_generated_from_the_declarations():
    from pipeline.lib import params

    text = (ROOT / "docs" / "parameters.md").read_text()
    table = text.split(params.TABLE_START + "\n", 1)[1].split(params.TABLE_END, 1)[0]
    assert table == params.markdown_table(), "run `python -m pipeline.lib.params docs/parameters.md`"
    keys = re.findall(r"^\| `([\w.]+)` \|", table, re.M)
    assert keys == params.all_keys()  # every key, once, in declaration order
    assert all(meta["doc"] for _, _, meta in params.declarations())


def test_the_make_check_example_is_what_check_says_of_this_project():
    from pipeline import check

    text = (ROOT / "docs" / "ci.md").read_text()
    for name, run in (("params", check.check_params), ("contract", check.check_contract), ("dag", check.check_dag)):
        assert f"\nok    {name:<9} {run(ROOT)}\n" in text, f"docs/ci.md's `make check` example: update the {name} line"


def test_the_module_map_names_every_library_module_once():
    text = (ROOT / "docs" / "internals.md").read_text().split("## The module map", 1)[1]
    named = re.findall(r"`(\w+)`", "\n".join(line.split(" | ")[0] for line in text.splitlines() if line.startswith("| `")))
    modules = sorted(p.stem for p in (ROOT / "pipeline" / "lib").glob("*.py") if p.stem != "__init__")
    assert sorted(named) == modules
