"""The package layout of docs/DESIGN.md: dependencies between sub-packages run one way.

Imports are read from the source with ``ast`` (nothing is imported), so an import hidden inside a
function counts as well as one at the top of a module.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pixelclip"

# (sub-package, sub-package it must never import).
FORBIDDEN = [("modeling", "inference")]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in a module of the package."""
    # The package a relative import starts from: pixelclip.modeling for pixelclip/modeling/x.py.
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    package = parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # "from .. import inference" names the sub-package in the imported names.
            out += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return out


def test_relative_imports_are_resolved():
    path = PACKAGE / "modeling" / "head.py"
    names = [name for _, name in imported_modules(path)]
    assert "pixelclip.modeling.vocabulary.VocabularyEmbedder" in names
    assert "pixelclip.modeling.clip.create_clip_from_config" in names


@pytest.mark.parametrize(("sub", "forbidden"), FORBIDDEN)
def test_dependencies_run_one_way(sub, forbidden):
    files = sorted((PACKAGE / sub).rglob("*.py"))
    assert files, f"no modules under pixelclip/{sub}"
    target = f"pixelclip.{forbidden}"
    bad = [
        f"{path.relative_to(REPO)}:{line} imports {name}"
        for path in files
        for line, name in imported_modules(path)
        if name == target or name.startswith(target + ".")
    ]
    assert not bad, f"pixelclip/{sub} must not import {target}:\n" + "\n".join(bad)


# tools/install_detectron2.py runs before the package (or detectron2) is installed: it cannot
# import pixelclip, so its repacking logic stays in the script.
STANDALONE_TOOLS = {"install_detectron2.py"}
MAX_TOOL_LINES = 150


def test_tools_are_thin_scripts():
    tools = sorted((REPO / "tools").glob("*.py"))
    assert tools
    long = {
        p.name: n
        for p in tools
        if p.name not in STANDALONE_TOOLS
        and (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_TOOL_LINES
    }
    assert not long, f"tools/ holds library logic (lines per script): {long}; move it to pixelclip/"
