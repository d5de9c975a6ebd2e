"""`routa-tokens`: create, list and revoke API tokens in DATABASE_URL's api_tokens table.

The plain token is printed once, by `create`; only its sha256 is stored. A gateway or query
process notices a new or revoked token within AUTH_CACHE_TTL seconds (default 5). The first
token ever created turns auth on for good: revoking every token leaves it required (nobody
gets in until a new token is created); only AUTH=off on the processes turns it off.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence

import asyncpg

from shared import cli
from shared.db import tokens
from shared.db.migrate import migrate


def _workspaces(value: str) -> list[str]:
    names = [w.strip() for w in value.split(",") if w.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give workspace ids separated by commas, or *")
    return names


def parser() -> argparse.ArgumentParser:
    p = cli.parser("routa-tokens", __doc__ or "")
    sub = p.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="make a token and print it (once)")
    create.add_argument(
        "--workspaces",
        "-w",
        type=_workspaces,
        required=True,
        help="ws1,ws2 or * for every workspace",
    )
    create.add_argument("--label", "-l", help="a note for `list`")
    sub.add_parser("list", help="id, label, workspaces, created, revoked")
    revoke = sub.add_parser("revoke", help="revoke a token by the id `list` shows")
    revoke.add_argument("id", help="the token id (a unique prefix of its hash)")
    p.add_argument("--database-url", help="default: DATABASE_URL")
    return p


async def run(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    database_url = args.database_url
    if database_url is None:
        from shared.settings import load_settings

        database_url = load_settings("routa-tokens").database_url
    await migrate(database_url)
    conn = await asyncpg.connect(database_url)
    out = sys.stdout
    try:
        if args.command == "create":
            token = tokens.new_token()
            row = await tokens.create(conn, token, args.workspaces, args.label)
            out.write(f"{token}\n")
            sys.stderr.write(
                f"token id {row.id} for {','.join(row.workspaces)}; "
                "store it now: it is not shown again\n"
            )
        elif args.command == "list":
            for r in await tokens.list_all(conn):
                revoked = r.revoked_at.isoformat() if r.revoked_at else "-"
                out.write(
                    f"{r.id}\t{r.label or '-'}\t{','.join(r.workspaces)}\t"
                    f"{r.created_at.isoformat()}\trevoked={revoked}\n"
                )
        else:
            full = await tokens.find(conn, args.id) if len(args.id) >= 8 else None
            if full is None:
                sys.stderr.write(f"no single token with id {args.id}\n")
                return 1
            if not await tokens.revoke(conn, full):
                sys.stderr.write(f"token {args.id} was already revoked\n")
                return 1
            out.write(f"revoked {full[:12]}\n")
            if not await tokens.any_active(conn):
                sys.stderr.write(
                    "no active token left in api_tokens: auth stays on, only AUTH_TOKENS "
                    "tokens (if any) get in until a token is created; AUTH=off turns "
                    "auth off\n"
                )
    finally:
        await conn.close()
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(asyncio.run(run(argv)))


if __name__ == "__main__":
    main()
