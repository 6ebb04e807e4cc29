"""The documentation a newcomer reads: a README read in five minutes, and links that lead somewhere.

Checks README.md's size, that every relative link in README.md and docs/*.md names a file that exists (and,
for a Markdown target, a heading that exists), that each topic doc opens with its contents list, that the
README's Quickstart gives the commands CI and the scripts run, and that no shell example calls a command
that is not on PATH after the Quickstart.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
README_MAX_BYTES = 10 * 1024


# Docs that must open with a contents list linking to their own sections. docs/benchmarks.md is a log of
# runs, kept as it is.
TOPIC_DOCS = (
    "http-api.md",
    "configuration.md",
    "events.md",
    "delivery.md",
    "operations.md",
    "cli.md",
    "development.md",
    "troubleshooting.md",
    "privacy.md",
)

_FENCE = re.compile(r"^```.*?^```", re.M | re.S)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
_SHELL_BLOCK = re.compile(r"^```(?:sh|bash|shell)\n(.*?)^```", re.M | re.S)
# The project's commands, installed into .venv/bin/ and so not on PATH after the Quickstart.
_BARE_COMMAND = re.compile(r"(?:^|[;&|(]\s*|\$\(\s*)(?:[A-Z_]+=\S+\s+)*(ckanpackager|packager)\s", re.M)


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose(text: str) -> str:
    """The text without fenced blocks and code spans, where brackets are not links."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, numbered as GitHub numbers repeated ones."""
    seen: dict[str, int] = {}
    anchors = set()
    for match in _HEADING.finditer(_FENCE.sub("", path.read_text(encoding="utf-8"))):
        anchor = github_anchor(match.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        anchors.add(anchor if count == 0 else f"{anchor}-{count}")
    return anchors


def relative_links(path: Path) -> list[str]:
    return [
        target
        for target in _LINK.findall(prose(path.read_text(encoding="utf-8")))
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto: ...
    ]


def test_the_readme_is_at_most_10_kb() -> None:
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size:,} bytes; move detail into docs/"


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(doc: Path) -> None:
    broken = []
    for target in relative_links(doc):
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part).resolve() if file_part else doc
        if not linked.exists():
            broken.append(f"{target}: no such file")
            continue
        if anchor and linked.suffix == ".md" and anchor not in anchors_of(linked):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.relative_to(ROOT)}")
    assert broken == [], f"broken links in {doc.relative_to(ROOT)}"


def test_the_readme_maps_every_doc() -> None:
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)}
    unmapped = [p.name for p in DOCS.glob("*.md") if p.resolve() not in linked]
    assert unmapped == [], "docs the README's map does not name"
    assert (DOCS / "architecture.md").resolve() in linked, "the map must name docs/architecture.md"


@pytest.mark.parametrize("name", TOPIC_DOCS)
def test_each_topic_doc_opens_with_its_contents(name: str) -> None:
    text = (DOCS / name).read_text(encoding="utf-8")
    opening = text.split("\n## ", 1)[0]
    assert "Contents:" in opening, f"docs/{name} has no contents list before its first section"
    own_links = [t for t in _LINK.findall(opening) if t.startswith("#")]
    assert own_links, f"docs/{name}'s contents list links to none of its sections"


def test_the_quickstart_gives_the_commands_ci_and_the_scripts_run() -> None:
    readme = README.read_text(encoding="utf-8")
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert re.search(r"^bash scripts/up\b", quickstart, re.M)
    assert re.search(r"^bash scripts/test\b", quickstart, re.M)
    assert "exec bash scripts/test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


@pytest.mark.parametrize("doc", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_shell_examples_call_the_commands_where_the_quickstart_put_them(doc: Path) -> None:
    bare = []
    for block in _SHELL_BLOCK.findall(doc.read_text(encoding="utf-8")):
        if "source .venv/bin/activate" in block:
            continue
        bare += [m.group(0).strip() for m in _BARE_COMMAND.finditer(block)]
    assert bare == [], f"{doc.relative_to(ROOT)}: call .venv/bin/<command>, or activate the venv first"
