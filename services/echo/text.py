"""Prompt text helpers: flatten a prompt, split it into a command, cut replies into word chunks."""

from __future__ import annotations

import re
from collections.abc import Iterable

from acp.schema import TextContentBlock

# One word plus the whitespace after it; leading whitespace sticks to the first word,
# so the chunks always concatenate back to the exact text.
_WORD = re.compile(r"\s*\S+\s*")
_COMMAND = re.compile(r"\s*(\S*)\s*(.*)\Z", re.DOTALL)


def prompt_text(blocks: Iterable[object]) -> str:
    """Concatenate the text blocks of a prompt; other block types are ignored."""
    return "".join(b.text for b in blocks if isinstance(b, TextContentBlock))


def word_chunks(text: str) -> list[str]:
    """Split text into chunks of one word plus its trailing whitespace."""
    chunks: list[str] = _WORD.findall(text)
    if not chunks and text:
        return [text]
    return chunks


def split_command(text: str) -> tuple[str, str]:
    """Return (first word, the rest after it and its following whitespace)."""
    match = _COMMAND.match(text)
    if match is None:  # pragma: no cover - the pattern matches every string
        return "", text
    return match.group(1), match.group(2)
