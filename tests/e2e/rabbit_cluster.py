"""A throw-away RabbitMQ cluster on this machine: three `rabbitmq-server` nodes of our own.

Each node gets its own node name, AMQP and distribution ports (free ones, chosen at run time),
data and log folders under the test's tmp folder, and the same Erlang cookie; plugins are off
(no management listener to collide with) and the machine's own configuration files are not
read, so the machine's broker on 5672 is never touched. Nodes 2 and 3 join node 1 with
`rabbitmqctl join_cluster`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

#: The real scripts: /usr/sbin/rabbitmq-server would switch to the rabbitmq user and lose our
#: environment.
RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


class ClusterStartError(Exception):
    """The cluster could not be started; the message says where its logs are."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Node:
    name: str
    port: int
    dist_port: int
    base: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class RabbitCluster:
    root: Path
    size: int = 3
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        tag = uuid.uuid4().hex[:6]
        self.root.mkdir(parents=True, exist_ok=True)
        cookie = self.root / ".erlang.cookie"
        cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq-env.conf").write_text("")
        for n in range(1, self.size + 1):
            base = self.root / f"node{n}"
            base.mkdir()
            (base / "rabbitmq.conf").write_text("")
            self.nodes.append(
                Node(
                    name=f"rbtest{n}-{tag}@localhost",
                    port=free_port(),
                    dist_port=free_port(),
                    base=base,
                )
            )

    def _env(self, node: Node | None = None) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),  # the cookie, for the nodes and for rabbitmqctl
            "LANG": "C.UTF-8",
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        if node is not None:
            env.update(
                RABBITMQ_NODENAME=node.name,
                RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
                RABBITMQ_NODE_PORT=str(node.port),
                RABBITMQ_DIST_PORT=str(node.dist_port),
                RABBITMQ_CONFIG_FILE=str(node.base / "rabbitmq"),
                RABBITMQ_MNESIA_BASE=str(node.base / "mnesia"),
                RABBITMQ_LOG_BASE=str(node.base / "log"),
            )
        return env

    def ctl(self, node: Node, *args: str, timeout: float = 180.0) -> str:
        """`rabbitmqctl -n NODE ARGS`; raises ClusterStartError with its output on failure."""
        result = subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", node.name, *args],
            env=self._env(),
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        output = (result.stdout + result.stderr).decode(errors="replace")
        if result.returncode != 0:
            raise ClusterStartError(
                f"rabbitmqctl {' '.join(args)} on {node.name} failed ({result.returncode}): "
                f"{output[-2000:]}; logs under {node.base}"
            )
        return output

    def start(self) -> None:
        """Start every node, wait for each, then join nodes 2.. to node 1."""
        if not (RABBITMQ_BIN / "rabbitmq-server").exists() or shutil.which("erl") is None:
            raise ClusterStartError(f"RabbitMQ is not installed under {RABBITMQ_BIN}")
        for node in self.nodes:
            with (node.base / "stdout.log").open("wb") as out:
                node.process = subprocess.Popen(
                    [str(RABBITMQ_BIN / "rabbitmq-server")],
                    env=self._env(node),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        for node in self.nodes:
            self._await_startup(node, timeout=180.0)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        self.ctl(first, "await_online_nodes", str(self.size), "--timeout", "120")

    def _await_startup(self, node: Node, *, timeout: float) -> None:
        """`await_startup` refuses a node not yet registered with epmd: ask until it is."""
        deadline = time.monotonic() + timeout
        while True:
            if not node.running:
                raise ClusterStartError(f"{node.name} exited; logs under {node.base}")
            try:
                self.ctl(node, "await_startup", "--timeout", str(int(timeout)))
                return
            except ClusterStartError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def stop_node(self, index: int) -> None:
        """Stop one node the way an operator or a crash would take it away: SIGKILL."""
        node = self.nodes[index]
        assert node.process is not None
        os.killpg(node.process.pid, signal.SIGKILL)
        node.process.wait(timeout=30)

    def close(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.running:
                os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait(timeout=30)
        # The nodes' Erlang port mappers stay registered only while the nodes live.
        deadline = time.monotonic() + 5
        while any(n.running for n in self.nodes) and time.monotonic() < deadline:
            time.sleep(0.1)
