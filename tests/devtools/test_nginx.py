"""The generated nginx config carries the documented routing and streaming settings."""

from __future__ import annotations

import subprocess

import pytest
from yarl import URL

from services.devtools import nginx
from services.devtools.upstreams import Backend, Upstreams

UPSTREAMS = Upstreams(
    Backend("gateway", URL("http://127.0.0.1:8001")),
    Backend("query", URL("http://127.0.0.1:8002")),
)


def test_config_routes_and_streams(tmp_path):
    text = nginx.render_config(
        tmp_path, ["127.0.0.1:3000"], UPSTREAMS, "127.0.0.1:9999"
    )
    for directive in (
        "listen 127.0.0.1:3000;",
        "upstream gateway { server 127.0.0.1:8001;",
        "upstream query { server 127.0.0.1:8002;",
        "location = /healthz { proxy_pass http://origin_health; }",
        "location = /api/acp {",
        "location /api/acp/ {",
        "proxy_buffering off;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_read_timeout 1h;",
        "client_max_body_size 2m;",
        """return 502 '{"error":"upstream gateway unavailable"}';""",
    ):
        assert directive in text


def test_config_is_accepted_by_nginx(tmp_path):
    binary = nginx.nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (the aiohttp origin is used instead)")
    text = nginx.render_config(tmp_path, ["127.0.0.1:3000"], UPSTREAMS, "127.0.0.1:9")
    conf = nginx.write_config(tmp_path, text)
    argv = nginx.command(binary, tmp_path, conf)
    result = subprocess.run([*argv, "-t"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
