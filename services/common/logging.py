"""structlog configuration: console lines locally, JSON lines in deployments."""

from __future__ import annotations

import logging
import sys

import structlog
from aiohttp.http_exceptions import HttpProcessingError


def configure_logging(level: str = "INFO", fmt: str = "console") -> None:
    shared_processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # JSON: `exc_info` becomes an `exception` string holding the whole traceback (the
    # renderer alone would print the exception tuple's reprs); the console renderer
    # formats tracebacks itself
    renderers: list[structlog.types.Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if fmt == "json"
        else [structlog.dev.ConsoleRenderer(colors=False)]
    )
    structlog.configure(
        processors=[
            # first: a line below the logger's level (the per-call rpc line at WARNING)
            # is dropped before the context merge and the timestamp are paid for
            structlog.stdlib.filter_by_level,
            *shared_processors,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared_processors,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *renderers,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    install_filters()


# The ACP SDK logs these on the root logger, with a traceback, when it writes to an agent
# whose stdin is already closed (the agent died, or was stopped with a permission request
# still being answered): an expected end of a pipe, said in one line.
_SDK_PIPE_MESSAGES = frozenset(
    {"Send loop failed", "Background task failed", "Receive loop failed"}
)


def _closed_pipe(exc: BaseException | None) -> bool:
    if isinstance(exc, ConnectionError):  # BrokenPipeError, ConnectionResetError, ...
        return True
    # uvloop: "unable to perform operation on <WriteUnixTransport closed=True ...>"
    return isinstance(exc, RuntimeError) and "closed" in str(exc)


class ClosedPipeFilter(logging.Filter):
    """The SDK's traceback for a write to a closed agent pipe → one warning line."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg  # structlog's records carry a dict here
        if not isinstance(message, str) or message not in _SDK_PIPE_MESSAGES:
            return True
        if not record.exc_info:
            return True
        exc = record.exc_info[1]
        if not _closed_pipe(exc):
            return True  # anything else keeps its traceback
        if message == "Background task failed":
            return False  # the same failed write, already said by the send loop
        record.msg = f"ACP: {message}: agent pipe closed ({exc.__class__.__name__})"
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.levelno = logging.WARNING
        record.levelname = "WARNING"
        return True


class ParseErrorFilter(logging.Filter):
    """aiohttp logs a traceback for every request its parser refused; our access line for
    it (route `<unparsed>`, with the reason) says all there is, so the traceback goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, HttpProcessingError)


def install_filters() -> None:
    """Idempotent: on the loggers themselves, so they hold whatever the handlers are."""
    for name, kind in (("", ClosedPipeFilter), ("aiohttp.server", ParseErrorFilter)):
        target = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in target.filters):
            target.addFilter(kind())
