"""Real ``nats-server`` processes for tests: a three-node JetStream cluster or one node.

Everything listens on free loopback ports and stores under a temp dir; a node can be
SIGKILLed, stopped and started again with its store kept, the way a crashed or restarted
host behaves. Each server dies with the process that started it (``PR_SET_PDEATHSIG``),
so an interrupted test run leaves no servers behind even when ``close()`` never ran.
"""
from __future__ import annotations

import ctypes
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
READY_TIMEOUT_S = 30  # JetStream meta leader election on a loaded 2-CPU box takes a few seconds
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL it when the test process goes away."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass
class Node:
    name: str
    port: int
    http_port: int
    cluster_port: int
    directory: Path
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def monitor(self, path: str) -> tuple[int, dict]:
        """GET a monitoring endpoint: (HTTP status, JSON body); (0, {}) when not answering."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=2) as reply:
                return reply.status, json.loads(reply.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")
        except (OSError, ValueError):
            return 0, {}

    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


class NatsCluster:
    """``size`` JetStream servers (1 or 3) in one cluster; ``urls`` for clients.

    Use as a context manager, or call ``close()``: it stops every node and removes the
    stores."""

    def __init__(self, size: int = 3, *, max_payload: str = "8MB", name: str = "collector-test"):
        if size not in (1, 3):
            raise ValueError("a test cluster has 1 or 3 nodes")
        self.size = size
        self.cluster_name = name
        self.max_payload = max_payload
        self.root = Path(tempfile.mkdtemp(prefix="nats-"))
        ports = _free_ports(3 * size)
        self.nodes = [Node(f"n{i + 1}", ports[3 * i], ports[3 * i + 1], ports[3 * i + 2], self.root / f"n{i + 1}")
                      for i in range(size)]
        try:
            for node in self.nodes:
                node.directory.mkdir()
                (node.directory / "nats.conf").write_text(self._config(node))
                self._spawn(node)
            self.wait_ready()
        except BaseException:
            self.close()
            raise

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url(self) -> str:
        """All nodes in the comma-separated form a collector config takes."""
        return ",".join(self.urls)

    def node(self, name: str) -> Node:
        return next(node for node in self.nodes if node.name == name)

    def _config(self, node: Node) -> str:
        lines = [
            f"server_name: {node.name}",
            f"listen: 127.0.0.1:{node.port}",
            f"http: 127.0.0.1:{node.http_port}",
            f"max_payload: {self.max_payload}",
            f'jetstream {{ store_dir: "{node.directory / "js"}" }}',
        ]
        if self.size > 1:
            routes = ", ".join(f"nats-route://127.0.0.1:{peer.cluster_port}" for peer in self.nodes)
            lines.append(f"cluster {{ name: {self.cluster_name}, listen: 127.0.0.1:{node.cluster_port}, "
                         f"routes: [{routes}] }}")
        return "\n".join(lines) + "\n"

    def _spawn(self, node: Node) -> None:
        log = open(node.directory / "server.log", "ab")
        with log:
            node.process = subprocess.Popen(
                [NATS_SERVER, "-c", str(node.directory / "nats.conf")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S, *, caught_up: bool = False) -> None:
        """Until every running node has JetStream up and sees a meta leader; with ``caught_up``,
        also until each has every stream and consumer current (plain ``/healthz``), which a
        restarted node needs before reads that may land on it are reliable."""
        deadline = time.monotonic() + timeout_s
        health = "/healthz" if caught_up else "/healthz?js-enabled-only=true"
        while True:
            problems = []
            for node in self.nodes:
                if node.process is None:
                    continue
                if not node.running:
                    raise RuntimeError(f"nats-server {node.name} exited with {node.process.returncode}:\n{node.log()}")
                status, body = node.monitor(health)
                if status != 200:
                    problems.append(f"{node.name}: healthz {status} {body}")
                    continue
                if self.size > 1:
                    _, jsz = node.monitor("/jsz")
                    if not (jsz.get("meta_cluster") or {}).get("leader"):
                        problems.append(f"{node.name}: no meta leader yet")
            if not problems:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"NATS cluster not ready after {timeout_s:.0f} s: {'; '.join(problems)}")
            time.sleep(0.1)

    def kill(self, name: str) -> None:
        """SIGKILL a node: no flush, no goodbye to its peers (a crashed host)."""
        node = self.node(name)
        if node.running:
            node.process.send_signal(signal.SIGKILL)
            node.process.wait(10)

    def stop(self, name: str) -> None:
        """Shut a node down cleanly (SIGTERM), the way systemd stops it."""
        node = self.node(name)
        if node.running:
            node.process.terminate()
            try:
                node.process.wait(15)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait(5)

    def start(self, name: str, *, wait: bool = True) -> None:
        """Start a stopped or killed node again on its ports, with its store."""
        node = self.node(name)
        if not node.running:
            self._spawn(node)
        if wait:
            self.wait_ready(caught_up=True)

    def leader_of(self, stream: str) -> str | None:
        """The server name leading a stream, as the monitoring endpoint of any live node sees it."""
        for node in self.nodes:
            if not node.running:
                continue
            _, jsz = node.monitor("/jsz?streams=true")
            for account in jsz.get("account_details") or []:
                for detail in account.get("stream_detail") or []:
                    if detail.get("name") == stream:
                        return (detail.get("cluster") or {}).get("leader")
        return None

    def close(self) -> None:
        for node in self.nodes:
            if node.running:
                node.process.kill()
            if node.process is not None:
                node.process.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "NatsCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
