"""REDIS_URL naming a Redis Cluster, and sharded pub/sub on a single Redis server."""

from __future__ import annotations

import ssl
import uuid

import pytest
from redis.asyncio.cluster import RedisCluster

from shared.channels import Channels
from shared.redisconn import (
    create_redis,
    is_cluster_url,
    parse_cluster_url,
    ssl_context,
    tls_options,
)
from shared.settings import Settings, load_settings


def test_cluster_url_parts() -> None:
    url = parse_cluster_url(
        "redis+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2:7001/0"
    )
    assert url.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert (url.username, url.password, url.tls) == ("app", "s@cret", False)
    assert parse_cluster_url("rediss+cluster://h").nodes == (("h", 6379),)
    assert parse_cluster_url("rediss+cluster://h").tls
    assert parse_cluster_url("redis+cluster://pw@h:1").password == "pw"
    with pytest.raises(ValueError, match="database 0"):
        parse_cluster_url("redis+cluster://h:1/2")
    with pytest.raises(ValueError, match="bad cluster node"):
        parse_cluster_url("redis+cluster://h:1,h:x")
    assert is_cluster_url("REDIS+CLUSTER://h:1")
    assert not is_cluster_url("redis://h:1/0")


def test_tls_options_of_a_url_are_the_clients() -> None:
    url = "rediss+cluster://h:1,h:2?ssl_ca_certs=/ca.pem&ssl_check_hostname=false"
    parsed = parse_cluster_url(url)
    assert parsed.tls_options == {
        "ssl_ca_certs": "/ca.pem",
        "ssl_check_hostname": False,
    }
    assert tls_options(url) == parsed.tls_options
    # a plain URL carries none, whatever its query says
    assert parse_cluster_url("redis+cluster://h:1?ssl_ca_certs=/x").tls_options == {}
    assert tls_options("redis://h:1/0?ssl_ca_certs=/x") == {}
    assert tls_options("rediss://h:1/0?ssl_cert_reqs=none&socket_timeout=3") == {
        "ssl_cert_reqs": "none"
    }
    with pytest.raises(ValueError, match="ssl_ca_path not supported"):
        parse_cluster_url("rediss+cluster://h:1?ssl_ca_path=/etc/ssl")
    assert ssl_context("redis://h:1/0") is None
    unverified = ssl_context("rediss://h:1/0?ssl_cert_reqs=none")
    assert unverified is not None
    assert unverified.verify_mode == ssl.CERT_NONE
    verified = ssl_context("rediss+cluster://h:1")
    assert verified is not None
    assert verified.verify_mode == ssl.CERT_REQUIRED
    assert verified.check_hostname


async def test_cluster_url_makes_a_cluster_client_and_sharded_channels() -> None:
    settings = Settings(redis_url="redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    assert settings.sharded_pubsub
    assert not Settings(redis_url="redis://127.0.0.1:6379/0").sharded_pubsub
    assert Settings(redis_url="redis://h:1/0", redis_sharded_pubsub=True).sharded_pubsub
    assert not Settings(
        redis_url=settings.redis_url, redis_sharded_pubsub=False
    ).sharded_pubsub
    client = create_redis(settings.redis_url)
    assert isinstance(client, RedisCluster)
    await client.aclose()


def test_a_malformed_cluster_url_is_one_line_naming_it(monkeypatch, capsys) -> None:
    monkeypatch.setenv("REDIS_URL", "redis+cluster://user:secret@h:1,h:x")
    with pytest.raises(SystemExit) as err:
        load_settings("routa-gateway")
    assert err.value.code == 2
    out = capsys.readouterr().err
    assert "REDIS_URL" in out
    assert "bad cluster node" in out
    assert "secret" not in out


def test_keys_changed_together_share_a_slot() -> None:
    names = Channels("p")
    for scope in ("w1", "w{2}", None):
        # every scope's keys in one slot: one script bumps a workspace's and the unscoped
        for key in (
            names.cache_sessions_generation(scope),
            names.cache_sessions_lists(scope),
        ):
            assert key.split("{")[1].split("}")[0] == "sessions"
    assert names.cache_sessions_lists("w1") != names.cache_sessions_lists(None)
    assert names.cache_sessions_lists("all") != names.cache_sessions_lists(None)
    invalidation = names.cache_sessions_invalidation("w:1")
    assert Channels.cache_sessions_invalidated(invalidation) == "w:1"
    assert Channels.cache_sessions_invalidated(b"sessions") is None
    sid = str(uuid.uuid4())
    assert f"{{{sid}}}" in names.session_events(sid)
