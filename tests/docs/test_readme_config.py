"""README's configuration reference names every environment variable of Settings."""

from __future__ import annotations

import re
from pathlib import Path

from shared.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_in_the_configuration_reference():
    text = README.read_text()
    start, end = (
        text.index("<!-- api-docs:start -->"),
        text.index("<!-- api-docs:end -->"),
    )
    section = text[start:end]
    table = section[section.index("## Configuration reference") :]
    names = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    missing = {f.upper() for f in Settings.model_fields} - names
    assert not missing, f"README configuration reference lacks {sorted(missing)}"
