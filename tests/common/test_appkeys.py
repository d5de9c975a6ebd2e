"""Every typed AppKey of a process is defined in that process's keys.py.

One place per process to read what its application holds; the modules defining the types
the keys name do not import keys.py, so there is no import cycle (import-linter checks).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _appkey_definitions() -> list[tuple[str, int]]:
    """(path, line) of every `AppKey(...)` call under services/."""
    found = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = (
                func.attr
                if isinstance(func, ast.Attribute)
                else getattr(func, "id", "")
            )
            if name == "AppKey":
                found.append((str(path.relative_to(ROOT)), node.lineno))
    return found


def test_appkeys_are_defined_only_in_keys_modules() -> None:
    found = _appkey_definitions()
    outside = [f"{path}:{line}" for path, line in found if Path(path).name != "keys.py"]
    assert outside == []
    # the scan sees the keys where they are: one keys.py per process that holds any
    assert {str(Path(path).parent) for path, _ in found} == {
        "services/common",
        "services/devtools",
        "services/gateway",
        "services/query",
    }
