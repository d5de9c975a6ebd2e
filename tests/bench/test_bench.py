"""`pytest -m bench`: the whole suite, short, asserting only that every scenario produced
its rows (figures are never asserted: timing belongs to the table, not to a test)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.bench import suite

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1800)]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not installed")
async def test_suite_prints_every_scenario(monkeypatch):
    monkeypatch.setattr(suite, "DURATION", float(os.environ.get("BENCH_DURATION", "2")))
    monkeypatch.setattr(suite, "SOAK", float(os.environ.get("BENCH_SOAK", "10")))
    ctx = await suite.run()
    text = suite.table(ctx)
    for scenario in (
        "1 warm list",
        "2 hop",
        "3 fan-out",
        "4 session/new",
        "5 soak",
        "6 log@",
    ):
        assert scenario in text, text


def _probe(rate: float, p99: float, held: bool) -> dict[str, object]:
    return {
        "rate": rate,
        "deliveries_per_s": rate * 10,
        "wall_deliveries_per_s": rate * 10,
        "delivered": 1.0 if held else 0.9,
        "p50_ms": p99 / 3,
        "p99_ms": p99,
        "sustained": held,
    }


SMALL_CURVES = {
    "machine": "2 vCPU, test",
    "duration": 2.0,
    "list": [
        {
            "sessions": n,
            "list_warm": {
                "bare_rps": 900.0,
                "bare_p99_ms": 4.0,
                "rps": 600.0 + i,
                "ratio": 0.66,
                "p99_ms": 6.0,
            },
            "list_cold": {"p50_ms": 3.0 * (i + 1), "p99_ms": 9.0 * (i + 1)},
        }
        for i, n in enumerate((1_000, 5_000))
    ],
    "replay": [
        {
            "events": 20_000,
            "sessions": 200,
            "long": 1_000,
            "points": [
                {
                    "replayed": d,
                    "seconds": d / 5e4 + 0.01,
                    "first_byte_ms": 2.0,
                    "bytes": d * 300,
                    "pg_seconds": d / 2e5,
                    "pg_bytes": d * 230,
                }
                for d in (100, 1_000)
            ],
        }
    ],
    "fanout": [
        {
            "subscribers": n,
            "rate": 50,
            "offered_deliveries_per_s": n * 50,
            "bare": _probe(50, 10.0, True),
            "one_gateway": _probe(50, 20.0, True),
            "two_gateways": _probe(50, 15.0, True),
            "one_ratio": 1.0,
            "two_ratio": 1.0,
        }
        for n in (50, 100)
    ],
    "streams": {
        "copy_baseline_per_s": 50_000.0,
        "idle": {"gateway_rss_kib": 100_000},
        "points": [
            {
                "sessions": n,
                "events_per_s": 9_000.0 / n**0.1,
                "ratio": 0.2,
                "gateway_kib_per_session": 300.0,
                "agent_pss_kib_per_session": 9_000.0,
            }
            for n in (1, 10)
        ],
    },
    "search": {
        "subscribers": 100,
        "sustained_p99_ms": 100.0,
        "half_p99_ms": 50.0,
        "target_ratio": 0.8,
        "bare_probes": [
            _probe(10, 5, True),
            _probe(20, 400, False),
            _probe(15, 60, True),
        ],
        "product_probes": [_probe(10, 30, True), _probe(20, 900, False)],
        "bare_ceiling_rate": 15.0,
        "bare_ceiling_deliveries_per_s": 1_500.0,
        "product_max_rate": 10.0,
        "product_max_deliveries_per_s": 1_000.0,
        "ratio": 10 / 15,
        "half_rate": 7.5,
        "half_bare": _probe(7.5, 4, True),
        "half_product": _probe(7.5, 20, True),
    },
}


def test_plots_draw_every_curve_from_the_json(tmp_path):
    """The plotting step alone, on a small JSON of the shape curves.py writes: one PNG per
    curve beside the JSON, and the tables print from the same figures."""
    try:
        from tests.bench import plots
    except ImportError as e:
        pytest.fail(f"matplotlib is missing ({e}): pip install -e .[bench]")
    from tests.bench import curves

    path = tmp_path / "curves.json"
    path.write_text(json.dumps(SMALL_CURVES))
    plots.main([str(path)])
    names = {"list", "replay", "fanout", "streams", "fanout_search"}
    for name in names:
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert {p.stem for p in tmp_path.glob("*.png")} == names
    # a JSON holding one curve draws only that one
    other = tmp_path / "only"
    written = plots.plot_all({"streams": SMALL_CURVES["streams"]}, other)
    assert [p.name for p in written] == ["streams.png"]
    text = curves.tables(SMALL_CURVES)
    assert "sessions streaming" in text
    assert "max deliveries/s at p99 <= 100 ms" in text


async def test_curves_measure_every_curve_and_plot_it(monkeypatch, tmp_path):
    """`scripts/bench --curves` at tiny sizes: every curve has its points and its same-run
    baseline in the JSON, and the plotting step draws one PNG per curve from that JSON."""
    try:
        from tests.bench import plots
    except ImportError as e:
        pytest.fail(f"matplotlib is missing ({e}): pip install -e .[bench]")
    from tests.bench import curves

    monkeypatch.setattr(suite, "DURATION", float(os.environ.get("BENCH_DURATION", "2")))
    for name, value in {
        "BENCH_CURVE_SESSIONS": "1k,2k",
        "BENCH_EVENTS": "20k",
        "BENCH_LONG": "1k",
        "BENCH_CURVE_SUBSCRIBERS": "20,40",
        "BENCH_CURVE_STREAMS": "1,3",
        "BENCH_STREAM_EVENTS": "600",
        "BENCH_SEARCH_SUBSCRIBERS": "20",
        "BENCH_SEARCH_START": "100",
        "BENCH_SEARCH_STEPS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "curves.json"
    result = await curves.run(set(curves.PARTS), path)
    assert json.loads(path.read_text()).keys() == result.keys()
    assert [r["sessions"] for r in result["list"]] == [1_000, 2_000]
    assert all(r["list_warm"]["bare_rps"] > 0 for r in result["list"])
    (log,) = result["replay"]
    assert [p["replayed"] for p in log["points"]] == [100, 1_000]
    assert all(p["pg_bytes"] > 0 and p["bytes"] > p["pg_bytes"] for p in log["points"])
    assert [r["subscribers"] for r in result["fanout"]] == [20, 40]
    streams = result["streams"]
    assert streams["copy_baseline_per_s"] > 0
    assert [p["sessions"] for p in streams["points"]] == [1, 3]
    for p in streams["points"]:
        assert p["received"] == 600, p  # 600 / 1 and 200 x 3: every chunk came through
        assert p["stored"] >= 600, p
        assert p["memory"]["agents"] >= p["sessions"], p
    search = result["search"]
    assert search["bare_probes"]
    assert search["product_probes"]
    # whether a rate is held is timing, never asserted; what was held decides what follows
    held = search["bare_ceiling_rate"] > 0
    assert ("half_product" in search) == held, search
    assert len(curves.search_rows(search)) == (3 if held else 1)
    written = plots.plot_all(result, tmp_path)
    assert {p.stem for p in written} == {
        "list",
        "replay",
        "fanout",
        "streams",
        "fanout_search",
    }


async def test_ab_compares_with_a_commit(monkeypatch, capsys):
    """`scripts/bench --ab REV`: both versions measured in alternating rounds, one row per
    figure (this checkout against its own HEAD: the figures are not compared here)."""
    from tests.bench import ab

    monkeypatch.setenv("BENCH_AB_EVENTS", "200")
    monkeypatch.setenv("BENCH_AB_NEW", "2")
    await ab.run("HEAD", 1)
    text = capsys.readouterr().out
    for figure in (
        "hop p50 ms",
        "hop p99 ms",
        "session/new median ms",
        "KiB per subscriber",
        "warm list req/s",
        "warm list p99 ms",
        "session/new p99 ms, all calls",
    ):
        assert f"| {figure} |" in text, text
