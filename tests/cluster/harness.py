"""A real Redis Cluster for tests: three masters and three replicas from the redis-server binary.

Each node is its own process on two free loopback ports (client and cluster bus), in a
private temp directory, memory only. `redis-cli --cluster create` joins them; the cluster
is used once every node reports `cluster_state:ok` and knows all six nodes. The machine's
own Redis is never touched.

With `tls=True` every node speaks only TLS (clients, cluster bus, replication) with a
throwaway CA made here, and asks clients for a certificate of that CA too; the URL then
carries the CA and the client certificate as `ssl_*` options. RedisTlsServer is one such
server without a cluster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from types import TracebackType
from typing import Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 60.0  # hang guard only


def _free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as s:
            s.bind((LOOPBACK, 0))
            port = int(s.getsockname()[1])
        if port not in taken and port != 6379:
            taken.add(port)
            return port


def _binary(name: str) -> str:
    path = shutil.which(name) or f"/usr/bin/{name}"
    if not Path(path).exists():
        raise RuntimeError(f"{name} not found")
    return path


class NoOwner(RuntimeError):
    """No node's slot ranges cover the slot (for a moment during a failover)."""


@dataclass(frozen=True)
class TlsFiles:
    """A throwaway CA and one certificate of it (server and client, 127.0.0.1)."""

    ca: Path
    cert: Path
    key: Path

    def server_args(self) -> list[str]:
        return [
            "--tls-cert-file", str(self.cert),
            "--tls-key-file", str(self.key),
            "--tls-ca-cert-file", str(self.ca),
            "--tls-auth-clients", "yes",
        ]  # fmt: skip

    def cli_args(self) -> list[str]:
        return [
            "--tls",
            "--cacert", str(self.ca),
            "--cert", str(self.cert),
            "--key", str(self.key),
        ]  # fmt: skip

    def url_query(self) -> str:
        """The `ssl_*` options of a REDIS_URL for these files (hostname checked)."""
        return (
            f"ssl_ca_certs={self.ca}&ssl_certfile={self.cert}&ssl_keyfile={self.key}"
            "&ssl_cert_reqs=required"
        )


def make_tls_files(directory: Path) -> TlsFiles:
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)

    def build(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None
    ) -> x509.CertificateBuilder:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=2))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        build("routa test CA", ca_key, None)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        build(LOOPBACK, key, ca_cert.subject)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(IPv4Address(LOOPBACK)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(
        directory / "ca.pem", directory / "redis.pem", directory / "redis.key"
    )
    files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def has_tls() -> bool:
    """Whether this redis-server was built with TLS (it then knows `tls-port`)."""
    # listening nowhere it exits at once; without TLS it refuses the unknown directive
    out = subprocess.run(
        [_binary("redis-server"), "--port", "0", "--tls-port", "0"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return "Bad directive" not in out.stdout + out.stderr


def _cli(
    port: int, *args: str, timeout: float = 10.0, tls: TlsFiles | None = None
) -> str:
    command = [_binary("redis-cli"), "-h", LOOPBACK, "-p", str(port)]
    if tls is not None:
        command += tls.cli_args()
    out = subprocess.run(
        [*command, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return out.stdout + out.stderr


def _info(port: int, *command: str, tls: TlsFiles | None = None) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in _cli(port, *command, tls=tls).splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            fields[key] = value
    return fields


class _Servers:
    """Started on entering a `with` (stopped again if the start fails), stopped on leaving."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class Node:
    port: int
    bus_port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None
    tls: TlsFiles | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def cli(self, *args: str) -> str:
        return _cli(self.port, *args, tls=self.tls)

    def cluster_info(self) -> dict[str, str]:
        if not self.alive():
            return {}
        return _info(self.port, "CLUSTER", "INFO", tls=self.tls)

    def role(self) -> str:
        return _info(self.port, "INFO", "replication", tls=self.tls).get("role", "")

    def port_args(self) -> list[str]:
        """Plain TCP, or TLS only (clients, cluster bus and replication alike)."""
        if self.tls is None:
            return ["--port", str(self.port)]
        return [
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cluster", "yes",
            "--tls-replication", "yes",
            *self.tls.server_args(),
        ]  # fmt: skip

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class RedisClusterServers(_Servers):
    """Six redis-server processes joined into one cluster; a context manager."""

    masters: int = 3
    replicas_per_master: int = 1
    tls: bool = False
    nodes: list[Node] = field(default_factory=list)
    tls_files: TlsFiles | None = None
    _root: Path | None = None

    @property
    def url(self) -> str:
        """The REDIS_URL the services take for this cluster (every node as a seed)."""
        seeds = ",".join(n.address for n in self.nodes)
        if self.tls_files is not None:
            return f"rediss+cluster://{seeds}?{self.tls_files.url_query()}"
        return f"redis+cluster://{seeds}"

    def start(self) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="routa-cluster-"))
        if self.tls:
            if not has_tls():
                raise RuntimeError("this redis-server was built without TLS")
            self.tls_files = make_tls_files(self._root / "tls")
        taken: set[int] = set()
        count = self.masters * (1 + self.replicas_per_master)
        for i in range(count):
            node = Node(
                _free_port(taken),
                _free_port(taken),
                self._root / f"n{i}",
                tls=self.tls_files,
            )
            node.directory.mkdir()
            log = (node.directory / "redis.log").open("ab")
            node.proc = subprocess.Popen(
                [
                    _binary("redis-server"),
                    *node.port_args(),
                    "--cluster-port", str(node.bus_port),
                    "--bind", LOOPBACK,
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", str(node.directory / "nodes.conf"),
                    "--cluster-node-timeout", "2000",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(node.directory),
                    "--daemonize", "no",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
            log.close()
            self.nodes.append(node)
        self._wait(lambda: all("PONG" in n.cli("PING") for n in self.nodes), "ping")
        created = subprocess.run(
            [
                _binary("redis-cli"),
                *(self.tls_files.cli_args() if self.tls_files else []),
                "--cluster", "create",
                *(n.address for n in self.nodes),
                "--cluster-replicas", str(self.replicas_per_master),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(
                f"cluster create failed: {created.stdout}{created.stderr}"
            )
        self.wait_ok()
        # cluster_state:ok says every slot is served; a replica joins its master a moment
        # later (and node 0 hears of it by gossip): tests that pick a replica wait for it
        self._wait(self._replicas_attached, "every replica attached")

    def _replicas_attached(self) -> bool:
        lines = self.nodes[0].cli("CLUSTER", "NODES").splitlines()
        flags = [line.split()[2] for line in lines if len(line.split()) >= 8]
        replicas = [f for f in flags if "slave" in f and "fail" not in f]
        return len(replicas) == self.masters * self.replicas_per_master

    def wait_ok(self) -> None:
        """Every live node sees a healthy cluster of all its nodes."""

        def ok() -> bool:
            for node in self.nodes:
                if not node.alive():
                    continue
                info = node.cluster_info()
                if info.get("cluster_state") != "ok":
                    return False
                if info.get("cluster_known_nodes") != str(len(self.nodes)):
                    return False
                if info.get("cluster_slots_ok") != "16384":
                    return False
            return True

        self._wait(ok, "cluster_state:ok")

    def master_of_slot(self, slot: int) -> Node:
        return self._node_of_slot(slot, master=True)

    def _is_master_of(self, slot: int, node: Node) -> bool:
        """False also while node 0's view has the slot between owners (mid-failover)."""
        try:
            return self.master_of_slot(slot).port == node.port
        except NoOwner:
            return False

    def replica_of_slot(self, slot: int) -> Node:
        """A replica of the slot's master that is not marked failing (waits for one)."""
        found: list[Node] = []

        def attached() -> bool:
            try:
                found.append(self._node_of_slot(slot, master=False))
            except StopIteration:
                return False
            return True

        self._wait(attached, f"a replica of slot {slot}")
        return found[-1]

    def _node_of_slot(self, slot: int, *, master: bool) -> Node:
        """From CLUSTER SHARDS-like CLUSTER NODES: the master (or a replica) serving `slot`."""
        lines = self.nodes[0].cli("CLUSTER", "NODES").splitlines()
        by_id: dict[str, tuple[str, str, str]] = {}
        owner_id = ""
        for line in lines:
            parts = line.split()
            if len(parts) < 8:
                continue
            node_id, addr, flags, master_id = parts[0], parts[1], parts[2], parts[3]
            by_id[node_id] = (addr.split("@")[0], flags, master_id)
            for rng in parts[8:]:
                if rng.startswith("["):
                    continue
                lo, _, hi = rng.partition("-")
                if int(lo) <= slot <= int(hi or lo):
                    owner_id = node_id
        if not owner_id:
            raise NoOwner(f"no node serves slot {slot}")
        if master:
            address = by_id[owner_id][0]
        else:
            address = next(
                addr
                for addr, flags, master_id in by_id.values()
                if master_id == owner_id and "fail" not in flags
            )
        return next(n for n in self.nodes if n.address == address)

    def failover(self, slot: int) -> tuple[Node, Node]:
        """CLUSTER FAILOVER on a replica of `slot`'s master; waits until it is master.

        Returns (old master, new master).
        """
        old = self.master_of_slot(slot)
        replica = self.replica_of_slot(slot)
        reply = replica.cli("CLUSTER", "FAILOVER")
        if "OK" not in reply:
            raise RuntimeError(f"CLUSTER FAILOVER: {reply}")
        self._wait(
            lambda: (
                replica.role() == "master"
                and self._is_master_of(slot, replica)
                and old.role() == "slave"
            ),
            "failover",
        )
        self.wait_ok()
        return old, replica

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGKILL)
                node.proc.wait(timeout=5)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    def _wait(self, predicate: object, what: str) -> None:
        assert callable(predicate)
        deadline = time.monotonic() + START_TIMEOUT
        while not predicate():
            for node in self.nodes:
                if node.proc is not None and node.proc.poll() is not None:
                    log = (node.directory / "redis.log").read_text()[-2000:]
                    raise RuntimeError(f"redis node {node.port} exited:\n{log}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis cluster: timed out waiting for {what}")
            time.sleep(0.1)


@dataclass
class RedisTlsServer(_Servers):
    """One redis-server (no cluster) speaking only TLS, with client certificates required."""

    port: int = 0
    tls_files: TlsFiles | None = None
    proc: subprocess.Popen[bytes] | None = None
    _root: Path | None = None

    @property
    def url(self) -> str:
        assert self.tls_files is not None
        return f"rediss://{LOOPBACK}:{self.port}/0?{self.tls_files.url_query()}"

    def start(self) -> None:
        if not has_tls():
            raise RuntimeError("this redis-server was built without TLS")
        self._root = Path(tempfile.mkdtemp(prefix="routa-redis-tls-"))
        self.tls_files = files = make_tls_files(self._root / "tls")
        self.port = _free_port(set())
        with (self._root / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    _binary("redis-server"),
                    "--port", "0",
                    "--tls-port", str(self.port),
                    *files.server_args(),
                    "--bind", LOOPBACK,
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(self._root),
                    "--daemonize", "no",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while "PONG" not in _cli(self.port, "PING", tls=files):
            if self.proc.poll() is not None:
                log_text = (self._root / "redis.log").read_text()[-2000:]
                raise RuntimeError(f"redis-server exited:\n{log_text}")
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server with TLS: timed out waiting for PING")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
