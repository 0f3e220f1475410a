"""The user documentation holds together: links resolve, METHOD citations name real sections.

* Every relative Markdown link ``[text](path#anchor)`` in README.md, INSTALL.md, datasets/README.md
  and docs/*.md names an existing file, and an anchor names a heading of the target (GitHub's
  heading slugs).
* Every ``METHOD §N`` / ``METHOD.md §N.M`` citation in code, configs and docs names a numbered
  heading of docs/METHOD.md.
* Every ``docs/<name>.md`` named in code or docs exists.
* Repository paths quoted in backticks in docs/METHOD.md and docs/REFERENCE_CHECKPOINT.md exist.
* CITATION.cff parses and names the paper.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
METHOD = ROOT / "docs" / "METHOD.md"
USER_DOCS = sorted(
    [ROOT / "README.md", ROOT / "INSTALL.md", ROOT / "datasets" / "README.md"]
    + list((ROOT / "docs").glob("*.md"))
)
# Folders that are not part of the project's own sources.
SKIP_DIRS = {".git", ".venv", "build", "dist", "output", "__pycache__", ".pytest_cache"}
CITING_SUFFIXES = {".py", ".yaml", ".yml", ".md", ".toml", ".cfg", ".txt"}

_FENCE = re.compile(r"^\s*(```|~~~)")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
_SECTION = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s")
_CITATION_LINE = re.compile(r"\bMETHOD(?:\.md)?\b")
_SECTION_SIGN = re.compile(r"§\s*(\d+(?:\.\d+)*)")
_CODE_PATH = re.compile(r"`((?:pixelclip|tests|tools|configs|datasets|demo)/[\w./-]+)`")


def _prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((number, line))
    return out


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed,
    spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"[`*_]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file (duplicates numbered -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(path):
        m = _HEADING.match(line)
        if not m:
            continue
        slug = github_slug(m.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def method_sections() -> set[str]:
    """Section numbers ("4", "4.2", ...) of the numbered headings of docs/METHOD.md."""
    return {m.group(1) for _, line in _prose_lines(METHOD) if (m := _SECTION.match(line))}


def _source_files():
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in filenames:
            if Path(name).suffix in CITING_SUFFIXES:
                yield Path(dirpath) / name


def _link_problems(path: Path, root: Path = ROOT) -> list[str]:
    """One message per relative link of ``path`` whose file or heading anchor does not exist."""
    problems = []
    for number, line in _prose_lines(path):
        for target in _LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                continue  # http:, https:, mailto:
            file_part, _, fragment = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(root)}:{number}: ({target})"
            if not resolved.exists():
                problems.append(f"{where} no such file")
            elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
                problems.append(f"{where} no heading with anchor #{fragment}")
    return problems


def test_user_docs_exist():
    assert METHOD.is_file() and (ROOT / "LICENSE").is_file()
    assert len(USER_DOCS) >= 6, [str(p) for p in USER_DOCS]


@pytest.mark.parametrize("path", USER_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert _link_problems(path) == []


def test_slugs_follow_github():
    assert github_slug("4. Online clustering of masks") == "4-online-clustering-of-masks"
    assert github_slug("11. Differences from the authors' code") == (
        "11-differences-from-the-authors-code"
    )
    slug = github_slug("Files from outside: one safe way in")
    assert slug == "files-from-outside-one-safe-way-in"


def test_link_check_finds_broken_links(tmp_path):
    (tmp_path / "other.md").write_text("# Title\n\n## A section\n", encoding="utf-8")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "[ok](other.md#a-section) [web](https://example.org/x) [self](#top)\n"
        "# Top\n[gone](missing.md) [bad](other.md#nowhere)\n```\n[in code](nothing.md)\n```\n",
        encoding="utf-8",
    )
    problems = _link_problems(doc, root=tmp_path)
    assert len(problems) == 2, problems
    assert "missing.md" in problems[0] and "#nowhere" in problems[1]


def test_method_citations_name_existing_sections():
    sections = method_sections()
    assert {str(n) for n in range(1, 12)} <= sections
    assert {"4.1", "4.2", "4.3", "4.4", "4.5"} <= sections  # "METHOD §4 steps 1-5"
    bad, count = [], 0
    for path in _source_files():
        if path == METHOD:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if not _CITATION_LINE.search(line):
                continue
            for section in _SECTION_SIGN.findall(line):
                count += 1
                if section not in sections:
                    bad.append(f"{path.relative_to(ROOT)}:{number}: §{section}: {line.strip()}")
    assert bad == [], "citations of sections docs/METHOD.md does not have:\n" + "\n".join(bad)
    assert count >= 30  # the scan really sees the code's citations


def test_docs_named_in_code_exist():
    """A file under docs/ that the library, a tool, a config or a document names is shipped."""
    named = re.compile(r"\bdocs/([\w.-]+\.md)\b")
    missing = []
    for path in _source_files():
        if path.relative_to(ROOT).parts[0] == "tests":
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            for name in named.findall(line):
                if not (ROOT / "docs" / name).is_file():
                    missing.append(f"{path.relative_to(ROOT)}:{number}: docs/{name}")
    assert missing == []


@pytest.mark.parametrize("name", ["METHOD.md", "REFERENCE_CHECKPOINT.md"])
def test_paths_quoted_in_method_docs_exist(name):
    quoted = {p for _, line in _prose_lines(ROOT / "docs" / name) for p in _CODE_PATH.findall(line)}
    assert quoted, "expected code paths in backticks"
    assert sorted(p for p in quoted if not (ROOT / p).exists()) == []


def test_user_docs_do_not_cite_issue_numbers():
    pattern = re.compile(r"\bissues?[ -]#?\d+", re.IGNORECASE)
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in USER_DOCS
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if pattern.search(line)
    ]
    assert hits == []


def test_citation_file_names_the_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert {"cff-version", "message", "title", "authors", "license"} <= set(cff)
    paper = cff["preferred-citation"]
    assert paper["title"] == (
        "Towards Open-Vocabulary Semantic Segmentation Without Semantic Labels"
    )
    assert [a["family-names"] for a in paper["authors"]][:2] == ["Shin", "Kim"]
    assert cff["license"] == "Apache-2.0"
