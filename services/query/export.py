"""`GET /api/sessions/{id}/export?format=markdown|jsonl|html`: a session's whole log, streamed.

The log is read a page at a time up to the last event stored when the request came, and
written as it is read, so a 100k-event session costs the memory of one page. `jsonl` writes the
stored event objects byte for byte (one per line, exactly as /history has them); `markdown` and
`html` render the conversation as the dashboard shows it, turning each event into text as it
arrives (runs of chunks continue the block they belong to), so nothing is buffered.
"""

from __future__ import annotations

import html
import logging
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import asyncpg
from aiohttp import web

from services.common.apidoc import Param, api
from services.common.http import stamp_request_id
from services.common.keys import PG_POOL
from services.query.apiparams import SID
from services.query.sessions import session_id_of
from shared.db import session_events
from shared.db import sessions as sessions_db
from shared.errors import BadRequest, SessionNotFound
from shared.jsonutil import loads
from shared.models.session import Session
from shared.models.validation import query_value

logger = logging.getLogger(__name__)

PAGE = 500  # events read (and held) at a time
TOOL_TITLES_MAX = 10_000  # tool call titles remembered for their updates


@dataclass(frozen=True, slots=True)
class Format:
    name: str
    ext: str
    content_type: str


FORMATS = {
    f.name: f
    for f in (
        Format("markdown", "md", "text/markdown"),
        Format("jsonl", "jsonl", "application/x-ndjson"),
        Format("html", "html", "text/html"),
    )
}


def parse_format(query: Mapping[str, str]) -> Format:
    """`format`, markdown when absent; anything else → 400 naming it."""
    value = query_value(query, "format") or "markdown"
    found = FORMATS.get(value)
    if found is None:
        raise BadRequest(f"Invalid format: {value} (one of {', '.join(FORMATS)})"[:300])
    return found


_UNSAFE = frozenset('"\\/')
_ATTR_CHARS = "!#$&+-.^_`|~"  # RFC 5987 attr-char besides letters and digits


def content_disposition(name: str | None, session_id: str, ext: str) -> str:
    """`attachment; filename="…"`, plus `filename*=UTF-8''…` (RFC 6266) for a non-ASCII name.

    `"`, `\\`, `/` and control characters become `_`; the plain `filename` of a non-ASCII
    name has `_` for each non-ASCII character, for clients without RFC 6266.
    """
    base = name or session_id
    safe = "".join(
        "_" if ch in _UNSAFE or unicodedata.category(ch) == "Cc" else ch for ch in base
    )
    filename = f"{safe}.{ext}"
    if filename.isascii():
        return f'attachment; filename="{filename}"'
    fallback = "".join(ch if ch.isascii() else "_" for ch in filename)
    encoded = quote(filename, safe=_ATTR_CHARS)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


# --- rendering ---------------------------------------------------------------------------


def content_text(content: Any) -> str:
    """The readable text of ACP content, as the dashboard reads it."""
    if isinstance(content, list):
        return "".join(content_text(c) for c in content)
    if not isinstance(content, dict):
        return ""
    kind = content.get("type")
    if kind == "text":
        text = content.get("text")
        return text if isinstance(text, str) else ""
    if kind == "content":
        return content_text(content.get("content"))
    if kind == "resource_link":
        return f"[{content.get('name') or content.get('uri') or 'resource'}]"
    if kind == "diff":
        return f"[diff {content.get('path') or ''}]".replace(" ]", "]")
    return f"[{kind if isinstance(kind, str) else 'content'}]"


def _str(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


# runs: chunk kinds that continue the block before them when their key matches
_RUNS = {
    "agent_message_chunk": "agent",
    "agent_thought_chunk": "thought",
    "user_message_chunk": "user",
    "terminal_output": "terminal",
}


class Transcript:
    """Events in, text out, one event at a time; subclasses say how each part looks."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._run: tuple[str, Any] | None = None
        self._tool_titles: dict[str, str] = {}

    @property
    def title(self) -> str:
        return self.session.name or self.session.session_id

    def feed(self, event: Mapping[str, Any]) -> str:
        update = event.get("update")
        if not isinstance(update, dict):
            return self._close()
        kind = update.get("sessionUpdate")
        run = _RUNS.get(kind) if isinstance(kind, str) else None
        if run is not None:
            if run == "terminal":
                key, text = update.get("terminalId"), _str(update.get("data"))
            else:
                key, text = update.get("messageId"), content_text(update.get("content"))
            out = ""
            if self._run != (run, key):
                out = self._close() + self.open_run(run)
                self._run = (run, key)
            return out + self.run_text(run, text)
        return self._close() + self.render(kind, update)

    def footer(self) -> str:
        return self._close() + self.end()

    def _close(self) -> str:
        if self._run is None:
            return ""
        run, self._run = self._run[0], None
        return self.close_run(run)

    def render(self, kind: Any, update: dict[str, Any]) -> str:
        if kind == "user_message":
            return self.user(content_text(update.get("content")))
        if kind in ("tool_call", "tool_call_update"):
            return self._tool(kind, update)
        if kind == "plan":
            entries = update.get("entries")
            return self.plan(entries if isinstance(entries, list) else [])
        if kind == "turn_complete":
            return self.marker(
                f"turn complete: {_str(update.get('stopReason')) or '?'}"
            )
        if kind == "error":
            return self.alert(f"Error: {_str(update.get('message')) or 'turn failed'}")
        if kind == "acp_status" and update.get("status") == "error":
            return self.alert(f"Agent error: {_str(update.get('error')) or 'unknown'}")
        if kind == "session_renamed":
            return self.marker(f"renamed to “{_str(update.get('name'))}”")
        if kind == "current_mode_update":
            mode = update.get("currentModeId") or update.get("modeId")
            return self.marker(f"mode: {_str(mode)}")
        if kind == "elicitation_request":
            return self.marker(f"the agent asked: {_str(update.get('message'))}")
        # status, usage, commands, stderr, kinds we do not know: not part of the conversation
        return ""

    def _tool(self, kind: str, update: dict[str, Any]) -> str:
        call_id = _str(update.get("toolCallId"))
        title = _str(update.get("title"))
        if title:
            if len(self._tool_titles) >= TOOL_TITLES_MAX:
                self._tool_titles.clear()
            self._tool_titles[call_id] = title
        else:
            title = self._tool_titles.get(call_id) or call_id or "tool call"
        locations = []
        for loc in update.get("locations") or []:
            if isinstance(loc, dict) and isinstance(loc.get("path"), str):
                line = loc.get("line")
                locations.append(f"{loc['path']}:{line}" if line else loc["path"])
        outcome = ""
        meta = update.get("_meta")
        permission = meta.get("permission") if isinstance(meta, dict) else None
        if isinstance(permission, dict):
            outcome = _str(permission.get("optionId") or permission.get("outcome"))
        return self.tool(
            update=kind == "tool_call_update",
            title=title,
            kind=_str(update.get("kind")),
            status=_str(update.get("status"))
            or ("" if kind != "tool_call" else "pending"),
            locations=locations,
            content=content_text(update.get("content")),
            permission=outcome,
        )

    # --- how it looks (subclasses) ---
    def header(self) -> str:
        raise NotImplementedError

    def end(self) -> str:
        raise NotImplementedError

    def open_run(self, run: str) -> str:
        raise NotImplementedError

    def run_text(self, run: str, text: str) -> str:
        raise NotImplementedError

    def close_run(self, run: str) -> str:
        raise NotImplementedError

    def user(self, text: str) -> str:
        raise NotImplementedError

    def tool(
        self,
        *,
        update: bool,
        title: str,
        kind: str,
        status: str,
        locations: list[str],
        content: str,
        permission: str,
    ) -> str:
        raise NotImplementedError

    def plan(self, entries: list[Any]) -> str:
        raise NotImplementedError

    def marker(self, text: str) -> str:
        raise NotImplementedError

    def alert(self, text: str) -> str:
        raise NotImplementedError


def _fence(text: str) -> str:
    """A code fence longer than any run of backticks in `text`."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _one_line(text: str) -> str:
    return " ".join(text.split())


class MarkdownTranscript(Transcript):
    _OPEN = {
        "agent": "### Agent\n\n",
        "user": "### User\n\n",
        "thought": "<details><summary>Thinking</summary>\n\n",
        "terminal": "Terminal output:\n\n    ",
    }
    _CLOSE = {"thought": "\n\n</details>\n\n"}

    def header(self) -> str:
        s = self.session
        return (
            f"# {_one_line(self.title)}\n\n"
            f"Session `{s.session_id}` · workspace `{s.workspace_id}` · "
            f"provider `{s.provider}` · created {s.created_at}\n\n"
        )

    def end(self) -> str:
        return ""

    def open_run(self, run: str) -> str:
        return self._OPEN[run]

    def run_text(self, run: str, text: str) -> str:
        # terminal output is an indented code block: each line keeps its indent
        return text.replace("\n", "\n    ") if run == "terminal" else text

    def close_run(self, run: str) -> str:
        return self._CLOSE.get(run, "\n\n")

    def user(self, text: str) -> str:
        return f"### User\n\n{text}\n\n"

    def tool(
        self,
        *,
        update: bool,
        title: str,
        kind: str,
        status: str,
        locations: list[str],
        content: str,
        permission: str,
    ) -> str:
        label = "Tool call update" if update else "Tool call"
        parts = [f"**{label}:** {_one_line(title)}"]
        if kind:
            parts.append(f"`{_one_line(kind)}`")
        if status:
            parts.append(f"_{_one_line(status)}_")
        out = " · ".join(parts) + "\n\n"
        if permission:
            out += f"Permission: {_one_line(permission)}\n\n"
        if locations:
            out += "".join(f"- {_one_line(loc)}\n" for loc in locations) + "\n"
        if content:
            fence = _fence(content)
            out += f"{fence}\n{content}\n{fence}\n\n"
        return out

    def plan(self, entries: list[Any]) -> str:
        lines = ["**Plan**\n"]
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            status = _str(entry.get("status"))
            box = "x" if status == "completed" else " "
            note = (
                f" _({status.replace('_', ' ')})_"
                if status not in ("completed", "")
                else ""
            )
            lines.append(f"- [{box}] {_one_line(_str(entry.get('content')))}{note}")
        return "\n".join(lines) + "\n\n"

    def marker(self, text: str) -> str:
        return f"_{_one_line(text)}_\n\n"

    def alert(self, text: str) -> str:
        return f"**{_one_line(text)}**\n\n"


def _e(text: str) -> str:
    return html.escape(text, quote=True)


_CSS = (
    "body{font:15px/1.5 system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem}"
    ".text{white-space:pre-wrap}section{margin:1rem 0}h3{margin:.2rem 0;font-size:.9rem}"
    ".user{background:#eef4ff;padding:.5rem .8rem;border-radius:.5rem}"
    ".tool{border:1px solid #ccc;border-radius:.4rem;padding:.4rem .8rem;margin:.6rem 0}"
    ".marker{color:#666;font-size:.85rem}.alert{color:#a00}.meta{color:#666}"
    "pre{white-space:pre-wrap;background:#f6f6f6;padding:.4rem}"
)


class HtmlTranscript(Transcript):
    """A standalone page; every byte that comes from the log is escaped."""

    _OPEN = {
        "agent": '<section class="agent"><h3>Agent</h3><div class="text">',
        "user": '<section class="user"><h3>User</h3><div class="text">',
        "thought": '<details class="thought"><summary>Thinking</summary><div class="text">',
        "terminal": '<pre class="terminal">',
    }
    _CLOSE = {
        "agent": "</div></section>\n",
        "user": "</div></section>\n",
        "thought": "</div></details>\n",
        "terminal": "</pre>\n",
    }

    def header(self) -> str:
        s = self.session
        return (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta http-equiv="Content-Security-Policy" '
            "content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            f"<title>{_e(self.title)}</title><style>{_CSS}</style></head>\n<body>\n"
            f"<h1>{_e(self.title)}</h1>\n"
            f'<p class="meta">Session <code>{_e(s.session_id)}</code> · workspace '
            f"<code>{_e(s.workspace_id)}</code> · provider <code>{_e(s.provider)}</code>"
            f" · created {_e(s.created_at)}</p>\n<main>\n"
        )

    def end(self) -> str:
        return "</main>\n</body></html>\n"

    def open_run(self, run: str) -> str:
        return self._OPEN[run]

    def run_text(self, run: str, text: str) -> str:
        return _e(text)

    def close_run(self, run: str) -> str:
        return self._CLOSE[run]

    def user(self, text: str) -> str:
        return f"{self._OPEN['user']}{_e(text)}{self._CLOSE['user']}"

    def tool(
        self,
        *,
        update: bool,
        title: str,
        kind: str,
        status: str,
        locations: list[str],
        content: str,
        permission: str,
    ) -> str:
        label = "Tool call update" if update else "Tool call"
        out = f'<div class="tool"><div>{label}: <strong>{_e(title)}</strong>'
        if kind:
            out += f" <code>{_e(kind)}</code>"
        if status:
            out += f' <span class="status">{_e(status)}</span>'
        out += "</div>"
        if permission:
            out += f"<div>Permission: {_e(permission)}</div>"
        if locations:
            items = "".join(f"<li><code>{_e(loc)}</code></li>" for loc in locations)
            out += f"<ul>{items}</ul>"
        if content:
            out += f"<pre>{_e(content)}</pre>"
        return out + "</div>\n"

    def plan(self, entries: list[Any]) -> str:
        items = "".join(
            f"<li>{_e(_str(e.get('content')))} "
            f'<span class="status">{_e(_str(e.get("status")))}</span></li>'
            for e in entries
            if isinstance(e, dict)
        )
        return f'<div class="plan"><strong>Plan</strong><ol>{items}</ol></div>\n'

    def marker(self, text: str) -> str:
        return f'<p class="marker">{_e(text)}</p>\n'

    def alert(self, text: str) -> str:
        return f'<p class="marker alert">{_e(text)}</p>\n'


# --- the route ---------------------------------------------------------------------------


def _render(
    transcript: Transcript | None, events: list[session_events.StoredEvent]
) -> bytes:
    if transcript is None:
        return b"".join(e.payload + b"\n" for e in events)
    return "".join(transcript.feed(loads(e.payload)) for e in events).encode()


@api(
    "The whole stored log as a download (Content-Disposition), streamed",
    "sessions",
    ("text/markdown", "application/x-ndjson", "text/html"),
    (400, 404, 503),
    (
        SID,
        Param(
            "format",
            schema={"enum": ["markdown", "jsonl", "html"], "default": "markdown"},
            description="jsonl: one stored event per line, as /history has them",
        ),
    ),
)
async def export_session(request: web.Request) -> web.StreamResponse:
    """Checks (404 session, then 400 format) and the first page before any byte goes out."""
    session_id = session_id_of(request)
    pool = request.app[PG_POOL]
    row = await sessions_db.get_row(pool, session_id)
    if row is None:
        raise SessionNotFound(str(session_id))
    fmt = parse_format(request.query)
    session, end = row.session, row.last_event_id
    page = await session_events.after(pool, session_id, 0, PAGE)
    transcript: Transcript | None = None
    if fmt.name == "markdown":
        transcript = MarkdownTranscript(session)
    elif fmt.name == "html":
        transcript = HtmlTranscript(session)
    resp = web.StreamResponse(
        headers={
            "Content-Disposition": content_disposition(
                session.name, session.session_id, fmt.ext
            ),
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        }
    )
    resp.content_type = fmt.content_type
    resp.charset = "utf-8"
    stamp_request_id(request, resp)
    await resp.prepare(request)
    try:
        if transcript is not None:
            await resp.write(transcript.header().encode())
        while page:
            # events stored after the request came are not part of this export
            page = [e for e in page if e.event_id <= end]
            if not page:
                break
            await resp.write(_render(transcript, page))
            if len(page) < PAGE or page[-1].event_id >= end:
                break
            page = await session_events.after(pool, session_id, page[-1].event_id, PAGE)
        if transcript is not None:
            await resp.write(transcript.footer().encode())
    except ConnectionResetError:
        pass  # the client left
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as err:
        # headers are out: cut the connection, so a client never takes a cut file for whole
        logger.warning("export of session %s cut short: %r", session_id, err)
        if request.transport is not None:
            request.transport.abort()
    return resp
