# ruff: noqa: T201
"""One PNG per scaling curve, drawn from the JSON that tests/bench/curves.py writes, so the
figures can be drawn again without measuring again:

    python -m tests.bench.plots docs/benchmarks/curves.json [--out DIR]

The PNGs go beside the JSON unless --out says otherwise. Every plot carries the baseline of
the same run next to the product. Needs matplotlib: `pip install -e .[bench]`.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

# By name, so that type checking in an environment without the bench extra (CI's) does
# not need matplotlib's stubs; the Agg backend draws files without a display.
matplotlib: Any = importlib.import_module("matplotlib")
matplotlib.use("Agg")
plt: Any = importlib.import_module("matplotlib.pyplot")
ticker: Any = importlib.import_module("matplotlib.ticker")

BASELINE = {"color": "0.45", "linestyle": "--", "marker": "s"}
PRODUCT = {"color": "tab:blue", "marker": "o"}
SECOND = {"color": "tab:orange", "marker": "^"}


def _title(fig: Any, text: str, result: dict[str, Any]) -> None:
    """`result`: the run, or one part of it measured on another machine (its own `machine`)."""
    fig.suptitle(f"{text}\n{result.get('machine', '')}", fontsize=10)


def _plain(ax: Any, *axes: str) -> None:
    """Log axes labelled 1, 2, 5, 10, 20 … (1,000 rather than 10^3)."""
    fmt = ticker.FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}")
    for which in axes:
        getattr(ax, f"{which}axis").set_major_locator(
            ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0))
        )
        getattr(ax, f"{which}axis").set_major_formatter(fmt)
        getattr(ax, f"{which}axis").set_minor_formatter(ticker.NullFormatter())


def _ticks_at(ax: Any, xs: list[float]) -> None:
    """A log x axis labelled at the measured points only."""
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{v:,.0f}" for v in xs])
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_list(result: dict[str, Any], out: Path) -> Path:
    rows = result["list"]
    x = [r["sessions"] for r in rows]
    w = [r["list_warm"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(x, [v["bare_rps"] for v in w], label="bare bytes (same run)", **BASELINE)
    a.plot(x, [v["rps"] for v in w], label="query service, warm list", **PRODUCT)
    a.set_ylabel("requests/s")
    b.plot(x, [v["bare_p99_ms"] for v in w], label="bare bytes p99", **BASELINE)
    b.plot(x, [v["p99_ms"] for v in w], label="warm list p99", **PRODUCT)
    b.plot(
        x,
        [r["list_cold"]["p99_ms"] for r in rows],
        label="cold list p99 (first request per workspace)",
        **SECOND,
    )
    b.set_ylabel("p99 ms")
    for ax in (a, b):
        ax.set_xscale("log")
        _ticks_at(ax, x)
        ax.set_xlabel("sessions in the database")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _title(fig, "Warm session list against the number of sessions", result)
    return _save(fig, out / "list.png")


def plot_replay(result: dict[str, Any], out: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = [PRODUCT, SECOND, {"color": "tab:green", "marker": "D"}]
    for i, log in enumerate(result["replay"]):
        pts = log["points"]
        x = [p["replayed"] for p in pts]
        style = styles[i % len(styles)]
        ax.plot(
            x,
            [p["seconds"] for p in pts],
            label=f"SSE replay, log of {log['events']:,} events",
            **style,
        )
        ax.plot(
            x,
            [p["pg_seconds"] for p in pts],
            label=f"same rows from Postgres alone ({log['events']:,})",
            color=style["color"],
            linestyle="--",
            marker="s",
            alpha=0.6,
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    _ticks_at(
        ax, sorted({p["replayed"] for log in result["replay"] for p in log["points"]})
    )
    _plain(ax, "y")
    ax.set_xlabel("events replayed (Last-Event-ID this far behind the head)")
    ax.set_ylabel("seconds to the connected frame")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _title(fig, "SSE replay time against events replayed", result)
    return _save(fig, out / "replay.png")


def plot_fanout(result: dict[str, Any], out: Path) -> Path:
    rows = result["fanout"]
    x = [r["subscribers"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(
        x,
        [r["offered_deliveries_per_s"] for r in rows],
        label="offered",
        color="0.7",
        linestyle=":",
    )
    sides = (
        ("bare", "bare encode-once (same run)", BASELINE),
        ("one_gateway", "1 gateway", PRODUCT),
        ("two_gateways", "2 gateways", SECOND),
    )
    for key, label, style in sides:
        # over the time the clients took: below the offered load once a side falls behind
        a.plot(x, [r[key]["wall_deliveries_per_s"] for r in rows], label=label, **style)
        b.plot(x, [r[key]["p99_ms"] for r in rows], label=label, **style)
    a.set_ylabel("deliveries/s (over the clients' wall time)")
    b.set_ylabel("p99 ms (due time to client)")
    b.set_yscale("log")
    _plain(b, "y")
    for ax in (a, b):
        ax.set_xscale("log")
        _ticks_at(ax, x)
        ax.set_xlabel(f"subscribers of one session at {rows[0]['rate']} events/s")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    _title(fig, "SSE fan-out against the number of subscribers", result)
    return _save(fig, out / "fanout.png")


def plot_streams(result: dict[str, Any], out: Path) -> Path:
    st = result["streams"]
    pts = st["points"]
    x = [p["sessions"] for p in pts]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.axhline(
        st["copy_baseline_per_s"],
        label="COPY in batches of 50 (same run)",
        color=BASELINE["color"],
        linestyle="--",
    )
    a.plot(
        x,
        [p["events_per_s"] for p in pts],
        label="1 gateway, stored+published",
        **PRODUCT,
    )
    a.set_ylabel("events/s")
    a.set_ylim(bottom=0)
    b.plot(
        x,
        [p["gateway_kib_per_session"] for p in pts],
        label="gateway RSS KiB per live session",
        **PRODUCT,
    )
    b.plot(
        x,
        [p["agent_pss_kib_per_session"] for p in pts],
        label="bench agent PSS KiB each",
        **SECOND,
    )
    b.set_ylabel("KiB")
    b.set_ylim(bottom=0)
    for ax in (a, b):
        ax.set_xscale("log")
        _ticks_at(ax, x)
        ax.set_xlabel("sessions streaming at once")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    _title(
        fig,
        "Events stored and published against concurrent sessions",
        st if "machine" in st else result,
    )
    return _save(fig, out / "streams.png")


def plot_search(result: dict[str, Any], out: Path) -> Path:
    s = result["search"]
    subs = s["subscribers"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label, style in (
        ("bare_probes", "bare encode-once (same run)", BASELINE),
        ("product_probes", "1 gateway", PRODUCT),
    ):
        probes = sorted(s[key], key=lambda p: p["rate"])
        xs = [p["rate"] * subs for p in probes]
        ax.plot(
            xs,
            [max(p["p99_ms"], 0.1) for p in probes],
            label=label,
            color=style["color"],
            linestyle=style.get("linestyle", "-"),
        )
        # filled: held (everything delivered, p99 within the bound); hollow: not held
        for xv, p in zip(xs, probes, strict=True):
            ax.plot(
                xv,
                max(p["p99_ms"], 0.1),
                marker=style["marker"],
                color=style["color"],
                markerfacecolor=style["color"] if p["sustained"] else "white",
            )
    for key, label, style in (
        ("half_bare", "bare at 50% of the ceiling", BASELINE),
        ("half_product", "1 gateway at 50% of the ceiling", PRODUCT),
    ):
        if key in s:
            ax.plot(
                s["half_rate"] * subs,
                max(s[key]["p99_ms"], 0.1),
                marker="*",
                markersize=12,
                linestyle="none",
                color=style["color"],
                label=label,
            )
    ax.axhline(s["sustained_p99_ms"], color="tab:red", linewidth=0.8, linestyle=":")
    ax.axhline(s["half_p99_ms"], color="tab:red", linewidth=0.8, linestyle="-.")
    if s.get("bare_ceiling_deliveries_per_s"):
        ax.axvline(
            s["bare_ceiling_deliveries_per_s"],
            color="0.45",
            linewidth=0.8,
            label=f"bare ceiling {s['bare_ceiling_deliveries_per_s']:,.0f}/s",
        )
        ax.axvline(
            s["bare_ceiling_deliveries_per_s"] / 2,
            color="0.45",
            linewidth=0.8,
            linestyle="-.",
            label="50% of the ceiling",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    _plain(ax, "x", "y")
    ax.set_xlabel(f"offered deliveries/s ({subs:,} subscribers x events/s)")
    ax.set_ylabel("p99 ms")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    _title(
        fig,
        f"Fan-out search: product max {s['product_max_deliveries_per_s']:,.0f}/s "
        f"= {s['ratio']:.0%} of the bare ceiling",
        result,
    )
    return _save(fig, out / "fanout_search.png")


PLOTS = {
    "list": plot_list,
    "replay": plot_replay,
    "fanout": plot_fanout,
    "streams": plot_streams,
    "search": plot_search,
}


def plot_all(result: dict[str, Any], out: Path) -> list[Path]:
    """A PNG for every curve the result holds; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    return [plot(result, out) for key, plot in PLOTS.items() if result.get(key)]


def main(argv: list[str]) -> None:
    args = list(argv)
    out = None
    if "--out" in args:
        i = args.index("--out")
        out = Path(args[i + 1])
        del args[i : i + 2]
    if len(args) != 1:
        raise SystemExit("usage: python -m tests.bench.plots CURVES.json [--out DIR]")
    path = Path(args[0])
    for written in plot_all(json.loads(path.read_text()), out or path.parent):
        print(written)


if __name__ == "__main__":
    main(sys.argv[1:])
