"""Forwarding JSON-RPC calls between gateway instances over Redis.

A session's agent runs on one gateway, its owner. A call that reaches another instance is
published on the owner's `gateway:{instanceId}:rpc` channel as `{request, replyTo}`; the owner
executes it exactly as if it came over HTTP and publishes the reply on `replyTo`. Replies come
back on one pattern subscription per instance. PUBLISH answering 0 receivers means no process
listens for that owner any more: the caller may adopt the session.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from typing import Any

from services.common.keys import SETTINGS
from services.gateway.keys import GATEWAY_LINK, SESSION_MANAGER
from services.gateway.link import OwnerLost, OwnerUnreachable
from services.gateway.rpc import Method, RpcCall, RpcError
from shared.errors import (
    INTERNAL_ERROR,
    SESSION_UNSERVABLE,
    AgentError,
    DomainError,
    SessionUnservable,
)

logger = logging.getLogger(__name__)


# Beyond PROMPT_TIMEOUT a forwarded prompt still needs the owner's resume (agent start and
# load, 30 s per request); other calls are bounded by their agent requests.
FORWARD_MARGIN = 90.0
CALL_TIMEOUT = 120.0
# How often one call re-reads the owner after a race (an adoption elsewhere, a drain).
ROUTE_ATTEMPTS = 3


def _forward_timeout(call: RpcCall) -> float:
    if call.method == "session/prompt":
        return call.app[SETTINGS].prompt_timeout + FORWARD_MARGIN
    return CALL_TIMEOUT


async def route(call: RpcCall, local: Method) -> Any:
    """Run a session call here, on the session's owner, or here after adopting it.

    The owner is whoever holds a live lease. A call that reaches nobody on the owner's
    channel adopts the session (compare-and-swap on the lease), then runs here and resumes
    it. A call that was itself forwarded is never forwarded again (-32010).
    """
    session_id = call.params.get("sessionId")
    manager = call.app[SESSION_MANAGER]
    link = call.app.get(GATEWAY_LINK)
    if (
        not isinstance(session_id, str)
        or link is None
        or manager.is_live_here(session_id)
    ):
        return await local(call)
    for attempt in range(1, ROUTE_ATTEMPTS + 1):
        last = attempt == ROUTE_ATTEMPTS
        owner = await manager.leases.remote_owner(session_id, call.allowed_workspaces)
        if owner is None:
            try:
                return await local(call)
            except SessionUnservable:
                # someone claimed it between our read and our claim: look again
                if last or call.forwarded:
                    raise
                continue
        if call.forwarded:
            raise SessionUnservable(f"Session owned by {owner}")
        request = {
            "jsonrpc": "2.0",
            "id": uuid.uuid4().hex,
            "method": call.method,
            "params": call.params,
        }
        try:
            reply = await link.forward(owner, request, timeout=_forward_timeout(call))
        except OwnerLost as err:
            if call.method == "session/prompt":
                # The turn died with its owner; adopt now so the log ends that turn and
                # the next call finds the session here.
                if await manager.leases.adopt(session_id, owner):
                    with contextlib.suppress(DomainError):
                        await manager.ensure_live(session_id, call.allowed_workspaces)
                if call.params.get("ifBusy") == "enqueue":
                    # it may have been queued (stored) there: it runs once taken up
                    raise AgentError(
                        f"Gateway instance {owner} stopped during the prompt; if it was "
                        "queued (a prompt_queued event), it stays queued and runs on the "
                        "instance that takes the session up"
                    ) from err
                raise AgentError(
                    f"Gateway instance {owner} stopped during the prompt; "
                    "the session can be prompted again"
                ) from err
            if await manager.leases.adopt(session_id, owner):
                return await local(call)
            continue
        except OwnerUnreachable:
            if await manager.leases.adopt(session_id, owner):
                logger.info("adopting session %s from %s", session_id, owner)
                return await local(call)
            continue
        except TimeoutError as err:
            raise SessionUnservable(
                f"Session owner {owner} did not answer in time"
            ) from err
        error = reply.get("error") if isinstance(reply, dict) else None
        if isinstance(error, dict):
            code = error.get("code")
            if code == SESSION_UNSERVABLE and not last:
                continue  # the owner is draining or lost the session: look again
            raise RpcError(
                code if isinstance(code, int) else INTERNAL_ERROR,
                str(error.get("message", "")),
                data=error.get("data"),
            )
        return reply.get("result") if isinstance(reply, dict) else None
    raise SessionUnservable(f"Session {session_id} cannot be served")


def routed(local: Method) -> Method:
    """`local` bound into `route`, so that it runs wherever the session lives."""
    return functools.partial(route, local=local)
