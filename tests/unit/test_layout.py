"""The shape of the source tree: small modules, documented rooms, documented tests.

The import contract between the rooms is checked by ``lint-imports`` (``make test``);
these are the rules it cannot express.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 400
GENERATED = ROOT / "gateway" / "v1"


def hand_written() -> list[Path]:
    """Every Python module of the product that a person wrote."""
    files = [*(ROOT / "gateway").rglob("*.py"), *(ROOT / "operator").rglob("*.py")]
    return sorted(p for p in files if GENERATED not in p.parents)


def test_no_hand_written_module_is_over_400_lines() -> None:
    """A module is small enough to read in one sitting; a longer one has two jobs."""
    assert len(hand_written()) > 40  # the scan found the tree
    long = {
        str(p.relative_to(ROOT)): n
        for p in hand_written()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_every_top_level_module_and_room_is_in_the_architecture_doc() -> None:
    """A newcomer finds every folder and top-level module of gateway/ explained in one page."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    entries = [
        p.name + "/" if p.is_dir() else p.name
        for p in (ROOT / "gateway").iterdir()
        if (p.is_dir() and (p / "__init__.py").exists())
        or (p.suffix == ".py" and not p.name.startswith("__"))
    ]
    assert {"sidecar/", "client/", "compat/", "devtools/", "config/", "cli.py"} <= set(entries)
    missing = sorted(e for e in entries if e not in doc)
    assert missing == []


def test_every_test_says_what_it_proves() -> None:
    """Each test function has a docstring: the report reads as a list of behaviours."""
    tests = 0
    bare = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name.startswith(
                "test_"
            ):
                tests += 1
                if not ast.get_docstring(node):
                    bare.append(f"{path.relative_to(ROOT)}::{node.name}")
    assert tests > 300  # the scan found the suite
    assert bare == []
