"""docs/ is the project's own reference: it names every setting, route and method the code
has, its links resolve, and nothing in the repository points at files outside it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from services.gateway.app import create_app as create_gateway
from services.gateway.keys import METHODS
from services.query.app import create_app as create_query
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

# Built from pieces so that this file does not contain what it looks for.
FORBIDDEN = (b"../" + b"shared", b"shared" + b"/spec")
SCANNED_DIRS = ("docs", "services", "shared", "tests", "deploy", "scripts", ".ci")
SKIPPED_DIRS = {
    ".git",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    "node_modules",
}

_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_ENDPOINT = re.compile(r"\b(GET|POST|PUT|PATCH|DELETE) (/[^\s`?|)]*)")


def _cells(line: str) -> list[str]:
    return [c.strip() for c in _CELL_SPLIT.split(line.strip().strip("|"))]


def _settings_rows() -> dict[str, str]:
    """Variable → its default cell, from the table between the settings markers."""
    text = (DOCS / "configuration.md").read_text()
    section = text[
        text.index("<!-- settings:start -->") : text.index("<!-- settings:end -->")
    ]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = _cells(line)
        for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0]):
            rows[name] = cells[1]
    return rows


def test_every_setting_has_a_row_in_configuration_md() -> None:
    rows = _settings_rows()
    fields = {name.upper() for name in Settings.model_fields}
    assert len(fields) > 30, "Settings fields not found: the walk is broken"
    missing = fields - rows.keys()
    assert not missing, f"docs/configuration.md lacks {sorted(missing)}"
    stale = rows.keys() - fields
    assert not stale, f"docs/configuration.md names unknown settings {sorted(stale)}"


def _default_text(default: Any) -> str:
    """How a default is written in the table's default cell."""
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def test_documented_defaults_are_the_code_defaults() -> None:
    rows = _settings_rows()
    wrong = []
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            continue  # computed at start (INSTANCE_ID): described in words
        cell = rows.get(name.upper(), "")
        expected = _default_text(field.default)
        if isinstance(field.default, int | float) and not isinstance(
            field.default, bool
        ):
            pattern = rf"(?<![\d.]){re.escape(expected)}(?![\d.])"
            found = re.search(pattern, cell) is not None
        else:
            found = expected in cell
        if not found:
            wrong.append(
                f"{name.upper()}: code default {expected!r}, row says {cell!r}"
            )
    assert not wrong, "docs/configuration.md defaults differ:\n" + "\n".join(wrong)


def _normal(path: str) -> str:
    """`/api/tasks/{id}` and `/api/tasks/{taskId}` are the same route."""
    return re.sub(r"\{[^}]*\}", "{}", path).rstrip("/") or "/"


def _documented_endpoints() -> set[tuple[str, str]]:
    """`METHOD /path` written in a heading or in the first cell of a table row of api.md."""
    found: set[tuple[str, str]] = set()
    for line in (DOCS / "api.md").read_text().splitlines():
        if line.startswith("#"):
            where = line
        elif line.startswith("|"):
            where = _cells(line)[0]
        else:
            continue
        for method, path in _ENDPOINT.findall(where):
            found.add((method, _normal(path)))
    return found


def test_every_route_of_both_apps_is_in_api_md(settings: Settings) -> None:
    registered: set[tuple[str, str]] = set()
    for app in (create_query(settings), create_gateway(settings)):
        for route in app.router.routes():
            if route.method == "HEAD" or route.resource is None:
                continue
            registered.add((route.method, _normal(route.resource.canonical)))
    assert ("GET", "/api/sessions/{}/history") in registered, "route walk is broken"
    missing = registered - _documented_endpoints()
    assert not missing, f"docs/api.md has no heading or table row for {sorted(missing)}"


def test_every_json_rpc_method_has_a_section_in_api_md(settings: Settings) -> None:
    methods = set(create_gateway(settings)[METHODS].methods)
    assert "session/prompt" in methods, "method registry walk is broken"
    headings = [
        line for line in (DOCS / "api.md").read_text().splitlines() if line[:1] == "#"
    ]
    missing = {
        m for m in methods if not any(f"`{m}`" in heading for heading in headings)
    }
    assert not missing, f"docs/api.md has no section for {sorted(missing)}"


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = heading.lstrip("#").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            slug = _slug(line)
            n, candidate = 0, slug
            while candidate in anchors:
                n += 1
                candidate = f"{slug}-{n}"
            anchors.add(candidate)
    return anchors


def test_links_between_the_docs_resolve() -> None:
    pages = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
    assert len(pages) >= 6
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue  # http(s) and other schemes
            file_part, _, anchor = target.partition("#")
            linked = (page.parent / file_part).resolve() if file_part else page
            if not linked.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def _files(root: Path) -> list[Path]:
    found = [p for p in root.iterdir() if p.is_file()]
    for name in SCANNED_DIRS:
        base = root / name
        if not base.is_dir():
            continue
        stack = [base]
        while stack:
            for entry in stack.pop().iterdir():
                if entry.is_dir():
                    if entry.name not in SKIPPED_DIRS:
                        stack.append(entry)
                elif entry.is_file():
                    found.append(entry)
    return found


def _pointers_outside(root: Path) -> list[str]:
    hits = []
    for path in _files(root):
        data = path.read_bytes()
        hits += [
            f"{path.relative_to(root)}: {needle.decode()}"
            for needle in FORBIDDEN
            if needle in data
        ]
    return hits


def test_nothing_in_the_repository_points_outside_it() -> None:
    files = _files(ROOT)
    assert ROOT / "README.md" in files
    assert any(p.parent.name == "docs" for p in files)
    hits = _pointers_outside(ROOT)
    assert not hits, "files pointing outside the repository:\n" + "\n".join(hits)


def test_the_scan_finds_a_planted_pointer(tmp_path: Path) -> None:
    """The check above can fail: a pointer in any scanned place is found."""
    (tmp_path / "README.md").write_text("see the contract\n")
    nested = tmp_path / "services" / "x"
    nested.mkdir(parents=True)
    (nested / "mod.py").write_bytes(b"# details in " + FORBIDDEN[0] + b"/api.md\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_bytes(b"[x](" + FORBIDDEN[1] + b"/api.md)\n")
    cache = tmp_path / "tests" / "__pycache__"
    cache.mkdir(parents=True)
    (cache / "t.pyc").write_bytes(FORBIDDEN[0])  # caches are not the repository
    hits = _pointers_outside(tmp_path)
    assert sorted(h.split(":")[0] for h in hits) == [
        "docs/a.md",
        "services/x/mod.py",
    ]
