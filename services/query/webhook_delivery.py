"""Delivering webhooks: the worker that drains the `webhook_deliveries` outbox.

Every query instance runs one. Workers claim due rows with `FOR UPDATE SKIP LOCKED`
(shared/db/webhooks.py), so instances share the work and no attempt is made twice; a claim
left by a worker that died falls due again after `CLAIM_SECONDS`. At least once, then:
a receiver deduplicates on `webhook-id`, which is the delivery id on every retry.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
from standardwebhooks import Webhook as StandardWebhook

from services.query.webhook_targets import (
    AllowList,
    GuardedResolver,
    TargetRefused,
    check_literal,
)
from shared.db import webhooks as db
from shared.db.connect import Pool

logger = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
DELIVERY_TIMEOUT = 10.0  # a 2xx within this is delivered
FIRST_RETRY = 1.0  # seconds after the first failure
MAX_GAP = 3600.0  # retries are at most an hour apart
JITTER = 0.2  # each gap is scaled by a factor in [1 - JITTER, 1 + JITTER]
GIVE_UP_AFTER = timedelta(hours=24)  # after the first attempt: then dead
# a claimed attempt not recorded within this (its worker died) is due again
CLAIM_SECONDS = 60.0
CONCURRENCY = 16  # attempts in flight per worker
KEEP_FINISHED = 7 * 24 * 3600.0  # delivered and dead rows are kept this long
PURGE_EVERY = 3600.0
_PG_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


def signing_key(secret: str) -> bytes:
    """Standard Webhooks: `whsec_` + base64 is the key; any other secret is its UTF-8."""
    if secret.startswith(SECRET_PREFIX):
        return base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    return secret.encode()


def sign(secret: str, message_id: str, timestamp: int, body: str) -> str:
    """`v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">` by the maintained library
    (given the key's bytes, so a plain secret is not mistaken for base64)."""
    return StandardWebhook(signing_key(secret)).sign(
        message_id, datetime.fromtimestamp(timestamp, UTC), body
    )


def next_attempt(
    attempts: int,
    first_attempt_at: datetime,
    failed_at: datetime,
    rand: Callable[[], float] = random.random,
) -> datetime | None:
    """When to try again after `attempts` failed attempts; None: give up (dead).

    The first retry comes about FIRST_RETRY after the failure, each later gap doubles,
    every gap is jittered by ±JITTER and capped at MAX_GAP; no attempt is planned past
    GIVE_UP_AFTER from the first one (the last lands on that mark), and a failure at or
    after the mark is final.
    """
    deadline = first_attempt_at + GIVE_UP_AFTER
    if failed_at >= deadline:
        return None
    base = min(FIRST_RETRY * 2.0 ** min(max(attempts - 1, 0), 32), MAX_GAP)
    gap = min(base * (1.0 + JITTER * (2.0 * rand() - 1.0)), MAX_GAP)
    return min(failed_at + timedelta(seconds=gap), deadline)


class DeliveryWorker:
    """Claims due deliveries, posts them and records each outcome."""

    def __init__(
        self,
        pool: Pool,
        allow: AllowList,
        *,
        poll_interval: float,
        timeout: float = DELIVERY_TIMEOUT,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self.pool = pool
        self.allow = allow
        self.poll_interval = poll_interval
        self.timeout = timeout
        self.concurrency = concurrency
        self._inflight: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(
            resolver=GuardedResolver(self.allow),
            use_dns_cache=False,  # every attempt checks what the name resolves to now
            limit=self.concurrency,
        )
        self._http = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"User-Agent": "routa-webhooks/1"},
        )
        next_purge = time.monotonic()
        try:
            while True:
                if time.monotonic() >= next_purge:
                    next_purge = time.monotonic() + PURGE_EVERY
                    await self._purge()
                try:
                    full = await self._claim_and_start()
                except Exception:  # the worker must outlive any one bad pass
                    logger.exception("webhook delivery pass failed")
                    full = False
                if full:
                    await asyncio.sleep(0)  # more may be due: claim again at once
                elif self._inflight:
                    await asyncio.wait(
                        set(self._inflight),
                        timeout=self.poll_interval,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                else:
                    await asyncio.sleep(self.poll_interval)
        finally:
            for task in list(self._inflight):
                task.cancel()
            await asyncio.gather(*self._inflight, return_exceptions=True)
            await self._http.close()

    async def _claim_and_start(self) -> bool:
        """Start an attempt per claimed delivery; True when every free slot was filled."""
        free = self.concurrency - len(self._inflight)
        if free <= 0:
            return False
        claimed = await self._claim(free)
        for item in claimed:
            task = asyncio.create_task(self._attempt(item))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        return len(claimed) == free

    async def _claim(self, limit: int) -> list[db.Claim]:
        try:
            return await db.claim(self.pool, limit, CLAIM_SECONDS)
        except _PG_ERRORS as err:
            logger.warning("webhook deliveries not claimed: %s", err)
            return []

    async def _purge(self) -> None:
        try:
            await db.purge(self.pool, KEEP_FINISHED)
        except _PG_ERRORS as err:
            logger.warning("finished webhook deliveries not purged: %s", err)

    async def _post(self, item: db.Claim) -> tuple[int | None, str | None]:
        """(status code, error): one POST, no redirects followed."""
        assert self._http is not None
        try:
            url = check_literal(self.allow, item.url)
        except OSError as err:
            return None, f"url refused: {err}"
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": item.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(item.secret, item.id, timestamp, item.body),
        }
        try:
            async with self._http.post(
                url, data=item.body.encode(), headers=headers, allow_redirects=False
            ) as resp:
                if 200 <= resp.status < 300:
                    return resp.status, None
                return resp.status, f"HTTP {resp.status}"
        except TimeoutError:
            return None, f"no answer within {self.timeout:g} s"
        except aiohttp.ClientConnectorError as err:
            if isinstance(err.os_error, TargetRefused):  # from GuardedResolver
                return None, f"url refused: {err.os_error}"
            return None, f"{type(err).__name__}: {err}"[:500]
        except (aiohttp.ClientError, OSError) as err:
            return None, f"{type(err).__name__}: {err}"[:500]

    async def _attempt(self, item: db.Claim) -> None:
        started = time.monotonic()
        try:
            status_code, error = await self._post(item)
        except asyncio.CancelledError:
            # shutting down mid-attempt: hand the delivery back, due at once
            await asyncio.shield(self._release(item))
            raise
        except Exception as err:  # a bug must not leave the claim to loop every minute
            logger.exception("webhook delivery %s attempt failed", item.id)
            status_code, error = None, f"internal error: {type(err).__name__}"
        if error is None:
            outcome, next_at = "delivered", None
        else:
            failed_at = item.claimed_at + timedelta(seconds=time.monotonic() - started)
            next_at = next_attempt(item.attempt, item.first_attempt_at, failed_at)
            outcome = "failed" if next_at is not None else "dead"
        try:
            await db.record(
                self.pool, item.id, item.attempt, outcome, status_code, error, next_at
            )
        except _PG_ERRORS as err:
            # the claim runs out and the attempt is made again: at least once
            logger.warning("webhook delivery %s not recorded: %s", item.id, err)
        logger.info(
            "webhook delivery %s attempt %d: %s%s",
            item.id,
            item.attempt,
            outcome,
            f" ({error})" if error else "",
        )

    async def _release(self, item: db.Claim) -> None:
        try:
            await db.release(self.pool, item.id, item.attempt)
        except _PG_ERRORS as err:
            logger.warning("webhook delivery %s not released: %s", item.id, err)
