"""README stays a first page: its Reference section links every page of docs/.

The details (configuration, agents, tests, decisions, …) live in docs/; a page that README does
not link is one a newcomer never finds.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def unlinked_pages(readme: str, docs: Path) -> list[str]:
    """Pages of `docs` that the README's Reference section does not link."""
    start = readme.index("## Reference\n")
    end = readme.find("\n## ", start + 1)
    section = readme[start : end if end != -1 else None]
    linked = {t.partition("#")[0] for t in re.findall(r"\]\((docs/[^)\s]+)\)", section)}
    return sorted(
        f"docs/{p.name}" for p in docs.glob("*.md") if f"docs/{p.name}" not in linked
    )


def test_readme_reference_links_every_docs_page() -> None:
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert len(pages) >= 10
    missing = unlinked_pages((ROOT / "README.md").read_text(), ROOT / "docs")
    assert not missing, f"README's Reference does not link {missing}"


def test_a_page_missing_from_the_reference_is_found(tmp_path: Path) -> None:
    """The check can fail: a page linked only outside the Reference section counts as missing."""
    (tmp_path / "a.md").write_text("# A\n")
    (tmp_path / "b.md").write_text("# B\n")
    readme = (
        "# X\n\n## Reference\n\n- [docs/a.md](docs/a.md)\n\n"
        "## Try it\n\nsee [docs/b.md](docs/b.md#b)\n"
    )
    assert unlinked_pages(readme, tmp_path) == ["docs/b.md"]


def test_readme_keeps_only_the_first_hour() -> None:
    """Set-up, the two commands, what it is, a first session, a pointer to real agents, links."""
    headings = re.findall(r"^## (.+)$", (ROOT / "README.md").read_text(), re.M)
    assert headings == [
        "Reference",
        "What it is",
        "Try it: the seed's curl, a prompt, and the stream",
        "Connecting a real agent",
    ]
