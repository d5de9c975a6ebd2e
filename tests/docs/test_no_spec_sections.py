"""No file cites sections of a specification that is not in the repository.

Comments and docstrings once pointed at "api.md §5.1" and the like: a reader of a clone has no
such document, so they say what they mean instead, or name a docs/ page. Public standards
(an RFC, JSON-RPC 2.0) may still be cited by section. Migrations already applied are left as
written: editing one changes its checksum and stops start-up.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("services", "shared", "tests", "scripts", "deploy", "docs", ".ci")
TOP_LEVEL = ("README.md", "Procfile", "pyproject.toml")
SKIPPED_DIRS = {"__pycache__", "node_modules", ".mypy_cache", ".pytest_cache"}
APPLIED_MIGRATIONS = ROOT / "shared" / "db" / "migrations"

# "api.md §5", "acp.md §2.6", "house-style §2.9", "perf-ceilings §7", or a bare "§9.18";
# "RFC 9110 §7.6.1" and "JSON-RPC 2.0 §5" name public standards and may stay
CITATION = re.compile(
    "(?:api\\.md|acp\\.md|house-style|perf-ceilings)\\s*\u00a7"
    "|(?<!RFC \\d{4} )(?<!2\\.0 )\u00a7\\s*\\d"
)
THIS_FILE = Path(__file__).resolve()


def _files() -> list[Path]:
    found = [ROOT / name for name in TOP_LEVEL if (ROOT / name).is_file()]
    for name in SCANNED:
        base = ROOT / name
        if not base.is_dir():
            continue
        for path in base.rglob("*"):
            if not path.is_file() or SKIPPED_DIRS & set(path.parts):
                continue
            if path.is_relative_to(APPLIED_MIGRATIONS) or path == THIS_FILE:
                continue
            if path.suffix in {".png", ".ico", ".pyc"}:
                continue
            found.append(path)
    return found


def citations(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if CITATION.search(line)]


def test_the_pattern_finds_what_it_should() -> None:
    assert citations("x (api.md \u00a75.1) y")
    assert citations('"""Checks in the order of \u00a79.18."""')
    assert citations("# end (control message, \u00a76)")
    assert citations("see house-style \u00a72.9")
    assert not citations("# RFC 9110 \u00a77.6.1 hop-by-hop headers")
    assert not citations("# without an id (JSON-RPC 2.0 \u00a75)")
    assert not citations("see docs/api.md#error-codes")


def test_no_file_cites_spec_sections() -> None:
    hits = []
    for path in _files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        hits += [f"{path.relative_to(ROOT)}: {line}" for line in citations(text)]
    assert not hits, "spec section numbers cited:\n" + "\n".join(hits)
