"""A real multi-node Ray cluster on this machine, for tests and benchmarks: one ``ray start`` per node.

Each node (the head and every worker) is its own ``ray start --block`` process, in its own process
session, with its own ``--temp-dir`` (Ray 2.60 honours ``--temp-dir`` per node: a worker's session
directory is ``<its temp dir>/<the head's session name>``), its own ports and its own custom
``--resources``. That is as close to separate machines as one host gets: the nodes talk over TCP
(the node IP Ray picks, not a shared socket), and :meth:`LocalRayCluster.kill_node` takes a node down
the way a power cut does (``SIGKILL`` to its raylet, agents and workers at once).

Every process a node starts carries the environment variable
``PACSAI_RAYCLUSTER=<cluster>:<node>:<incarnation>`` (workers inherit the raylet's environment). Kill and stop find a node's processes by it and by
parentage, never by name, so another Ray on the same machine (a test session's ``ray.init()``) is
never touched; a global ``ray stop`` would kill it.

Security (both optional, both Ray's own mechanisms, set through the environment of every process):

* token authentication: ``RAY_AUTH_MODE=token`` and the token in a 0600 file named by
  ``RAY_AUTH_TOKEN_PATH`` (Ray also reads ``RAY_AUTH_TOKEN`` and ``~/.ray/auth_token``);
* mutual TLS on every gRPC channel: ``RAY_USE_TLS=1`` with ``RAY_TLS_SERVER_CERT``,
  ``RAY_TLS_SERVER_KEY`` and ``RAY_TLS_CA_CERT`` (see :class:`RayTls`).

Drivers never run in the caller's process (a test session may hold another Ray): use
:meth:`LocalRayCluster.driver` (a long-lived subprocess that runs code sent to it) or
:meth:`LocalRayCluster.run_driver` (one ``python -c``).
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import queue
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "CLUSTER_TOKEN",
    "ClusterError",
    "DriverError",
    "DriverProcess",
    "FAIL_FAST_CONNECT",
    "FAST_FAILURE_DETECTION",
    "LocalRayCluster",
    "NodeSpec",
    "RayTls",
    "node_ip",
    "ray_cli",
]

MARKER_ENV = "PACSAI_RAYCLUSTER"
"""Set to ``<cluster id>:<node name>:<incarnation>`` in the environment of each node's processes."""

STARTED = "Ray runtime started."
"""What ``ray start`` prints once its node is registered with the GCS (``Node.__init__`` waits)."""

FAST_FAILURE_DETECTION: Mapping[str, str] = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "3000",
    "RAY_health_check_failure_threshold": "3",
}
"""GCS settings that mark a killed node dead in about 3 s instead of ~15 s (Ray's defaults: a health
check every 3 s, dead after 5 failures). The timeout stays generous so a node slowed by a busy CPU is not declared
dead by mistake."""

FAIL_FAST_CONNECT: Mapping[str, str] = {
    "RAY_py_gcs_connect_timeout_s": "2",
    "RAY_gcs_rpc_server_connect_timeout_s": "2",
    "RAY_gcs_server_port_wait_time_s": "1",
}
"""Client settings for a driver or node that is expected NOT to get in (no token, a plain client
against TLS): give up after a few seconds instead of Ray's 20-100 s of retries."""

_ENV_NOT_INHERITED = (
    "RAY_ADDRESS",
    "RAY_NAMESPACE",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "RAY_USE_TLS",
    "RAY_TLS_SERVER_CERT",
    "RAY_TLS_SERVER_KEY",
    "RAY_TLS_CA_CERT",
    "RAY_gcs_storage",
    "RAY_gcs_storage_path",
    MARKER_ENV,
)
"""Variables of the caller's environment that would change what a node or driver connects to."""

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,40}$")


class ClusterError(RuntimeError):
    """A node did not start, or a cluster operation failed; the message carries the log's tail."""


class _ClusterToken(enum.Enum):
    TOKEN = "the cluster's token"


CLUSTER_TOKEN = _ClusterToken.TOKEN
"""Default of the ``token`` arguments: use the cluster's own token (whatever it is, or none)."""


def node_ip() -> str:
    """The IP Ray picks for a node on this machine (the source address of a route to 8.8.8.8, as in
    Ray's ``node_ip_address_from_perspective``; nothing is sent), or ``127.0.0.1`` without a route.
    Ray replaces ``127.0.0.1`` given as ``--node-ip-address`` by this address, so peers dial it: TLS
    certificates must name it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("8.8.8.8", 80))
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def ray_cli() -> list[str] | None:
    """The ``ray`` command of this interpreter's environment, or ``None`` if Ray is not installed."""
    exe = Path(sys.executable).parent / "ray"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("ray")
    if found:
        return [found]
    try:
        import importlib.util

        if importlib.util.find_spec("ray.scripts.scripts") is not None:
            return [sys.executable, "-m", "ray.scripts.scripts"]
    except ImportError:
        pass
    return None


@dataclass(frozen=True, slots=True)
class RayTls:
    """PEM files for Ray's mutual TLS. Every Ray process presents ``certificate`` both as a server
    and as a client and trusts peers signed by ``ca_certificate``, so the certificate must be valid
    for both uses (no extended key usage, or both serverAuth and clientAuth) and name every address
    peers dial (``localhost``, ``127.0.0.1`` and the node IP)."""

    ca_certificate: Path
    certificate: Path
    private_key: Path

    def env(self) -> dict[str, str]:
        """The environment variables that turn TLS on for a Ray process."""
        return {
            "RAY_USE_TLS": "1",
            "RAY_TLS_SERVER_CERT": str(self.certificate),
            "RAY_TLS_SERVER_KEY": str(self.private_key),
            "RAY_TLS_CA_CERT": str(self.ca_certificate),
        }


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node: its name (the caller's handle on it), custom resources and logical CPUs.

    ``num_cpus`` is logical (Ray's scheduling unit), so several nodes of 2 CPUs on a 2-core machine
    are fine; ``ray start`` takes whole numbers only.
    """

    name: str
    resources: Mapping[str, float] = field(default_factory=dict)
    num_cpus: int = 2


@dataclass(slots=True)
class _Ports:
    node_manager: int
    object_manager: int
    runtime_env_agent: int
    metrics_agent: int
    dashboard_agent_listen: int
    metrics_export: int
    min_worker: int
    max_worker: int


@dataclass(slots=True)
class _Node:
    spec: NodeSpec
    head: bool
    temp_dir: Path
    ports: _Ports
    incarnation: int = 0
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    node_id: str | None = None
    token: str | None | _ClusterToken = CLUSTER_TOKEN
    tls: bool = True
    extra_env: dict[str, str | None] = field(default_factory=dict)


def _roots(nodes: Iterable[_Node]) -> list[int]:
    """PIDs of the nodes' ``ray start`` processes that are not reaped yet (alive or zombie), so that
    none of them can have been reused by an unrelated process."""
    return [node.process.pid for node in nodes if node.process is not None and node.process.returncode is None]


class _PortAllocator:
    """Free TCP ports, never the same one twice within a cluster.

    All are picked between 20000 and the kernel's ephemeral range: a node restarts on its old ports,
    and a port in that range may meanwhile have become the local end of some outgoing connection;
    below 20000 lies ``ray start``'s default worker port range (10002-19999) of other clusters.
    """

    def __init__(self) -> None:
        self._taken: set[int] = set()

    @staticmethod
    def _bindable(port: int) -> bool:
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                return False
        return True

    def one(self) -> int:
        return self.span(1)[0]

    def span(self, count: int) -> tuple[int, int]:
        low, high = 20000, _ephemeral_low() - count
        for _ in range(200):
            first = secrets.randbelow(high - low) + low
            ports = range(first, first + count)
            if not self._taken.intersection(ports) and all(self._bindable(p) for p in ports):
                self._taken.update(ports)
                return first, first + count - 1
        raise ClusterError(f"no {count} consecutive free ports between {low} and {high}")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# ---------------------------------------------------------------- processes, found through /proc
def _environ_marker(pid: int) -> str | None:
    try:
        data = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    key = MARKER_ENV.encode() + b"="
    for item in data.split(b"\0"):
        if item.startswith(key):
            return item[len(key) :].decode(errors="replace")
    return None


def _stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, ppid, pgid)`` of a process, or ``None`` once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit()]


def _live(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def _processes(marker_prefix: str, roots: Iterable[int]) -> set[int]:
    """Live processes whose marker starts with ``marker_prefix``, plus every descendant of ``roots``
    (a process may rewrite its environment block, e.g. with ``setproctitle``; parentage still holds)."""
    found: set[int] = set()
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        stat = _stat(pid)
        if stat is None or stat[0] in ("Z", "X"):
            continue
        children.setdefault(stat[1], []).append(pid)
        marker = _environ_marker(pid)
        if marker is not None and marker.startswith(marker_prefix):
            found.add(pid)
    todo = [pid for pid in roots if _live(pid)] + list(found)
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(child for child in children.get(pid, ()) if child not in found)
    found.discard(os.getpid())
    return found


def _kill_all(marker_prefix: str, roots: Iterable[int], timeout: float = 30.0) -> None:
    """Freeze, then ``SIGKILL``, every process of ``marker_prefix``/``roots``; wait until none is left.

    Freezing first (``SIGSTOP``) keeps a raylet from starting a worker, and an agent from noticing its
    parent died, while the tree is being collected, so nothing escapes to init unseen.

    Raises:
        ClusterError: Some process still runs after ``timeout`` seconds.
    """
    roots = list(roots)
    deadline = time.monotonic() + timeout
    while True:
        frozen: set[int] = set()
        while True:
            tree = _processes(marker_prefix, roots)
            new = tree - frozen
            if not new:
                break
            for pid in new:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGSTOP)
            frozen |= new
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        while frozen and time.monotonic() < deadline:
            frozen = {pid for pid in frozen if _live(pid)}
            if frozen:
                time.sleep(0.02)
        if not _processes(marker_prefix, roots):
            return
        if time.monotonic() > deadline:
            left = sorted(_processes(marker_prefix, roots))
            raise ClusterError(f"processes of {marker_prefix!r} survive SIGKILL: {left}")


def _tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ---------------------------------------------------------------- drivers in subprocesses
_DRIVER_LOOP = r"""
import json, os, sys, traceback
_reply = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)
sys.stdout = sys.stderr
_ns = {"__name__": "__main__"}
for _line in sys.stdin:
    _request = json.loads(_line)
    try:
        if _request["mode"] == "eval":
            _out = {"ok": True, "value": eval(_request["code"], _ns)}
        else:
            exec(_request["code"], _ns)
            _out = {"ok": True, "value": None}
        _text = json.dumps(_out, default=repr)
    except BaseException as _error:
        _text = json.dumps({
            "ok": False,
            "type": type(_error).__name__,
            "message": str(_error),
            "traceback": traceback.format_exc(),
        })
    _reply.write(_text + "\n")
"""


class DriverError(RuntimeError):
    """Code sent to a :class:`DriverProcess` raised; ``type`` is the exception's class name."""

    def __init__(self, type_name: str, message: str, traceback_text: str) -> None:
        super().__init__(f"{type_name}: {message}\n--- driver traceback ---\n{traceback_text}")
        self.type = type_name
        self.message = message
        self.traceback = traceback_text


class DriverProcess:
    """A Python subprocess that runs the code sent to it (one namespace, kept between calls).

    The caller's process stays free of Ray: ``driver.exec("import ray; ray.init(address=...)")``
    connects the subprocess, and later ``exec``/``eval`` calls use that connection. Results come back
    as JSON (anything else as its ``repr``). The subprocess's stdout and stderr go to ``log``.
    """

    def __init__(self, env: Mapping[str, str], log: Path, cwd: Path | None = None) -> None:
        self.log = log
        self._log_file = log.open("ab")
        self._process = subprocess.Popen(
            [sys.executable, "-u", "-c", _DRIVER_LOOP],
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            start_new_session=True,
        )
        self._replies: queue.Queue[bytes] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        """The subprocess's PID."""
        return self._process.pid

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._replies.put(line)
        self._replies.put(b"")

    def _call(self, mode: str, code: str, timeout: float) -> Any:
        if self._process.poll() is not None or self._process.stdin is None:
            raise ClusterError(f"the driver exited ({self._process.returncode}):\n{_tail(self.log)}")
        self._process.stdin.write(json.dumps({"mode": mode, "code": code}).encode() + b"\n")
        self._process.stdin.flush()
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            self.close(timeout=1)
            raise TimeoutError(f"the driver did not answer within {timeout} s:\n{code}\n{_tail(self.log)}") from None
        if not line:
            self._process.wait(timeout=30)
            raise ClusterError(f"the driver exited ({self._process.returncode}):\n{_tail(self.log)}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise DriverError(reply["type"], reply["message"], reply["traceback"])
        return reply["value"]

    def exec(self, code: str, timeout: float = 120.0) -> None:
        """Run statements in the driver.

        Raises:
            DriverError: The code raised (in the driver).
            TimeoutError: No answer within ``timeout`` seconds (the driver is then killed).
            ClusterError: The driver process is gone.
        """
        self._call("exec", code, timeout)

    def eval(self, expression: str, timeout: float = 120.0) -> Any:
        """Evaluate an expression in the driver and return its value (JSON-decoded).

        Raises:
            DriverError: The expression raised (in the driver).
            TimeoutError: No answer within ``timeout`` seconds (the driver is then killed).
            ClusterError: The driver process is gone.
        """
        return self._call("eval", expression, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """End the driver: EOF on its stdin (it disconnects from Ray as it exits), then SIGKILL."""
        if self._process.poll() is None:
            with contextlib.suppress(OSError):
                assert self._process.stdin is not None
                self._process.stdin.close()
            try:
                self._process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=30)
        with contextlib.suppress(OSError):
            if self._process.stdin is not None:
                self._process.stdin.close()
        self._log_file.close()

    def __enter__(self) -> DriverProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# ---------------------------------------------------------------- the cluster
class LocalRayCluster:
    """A head and worker nodes, each a ``ray start --block`` process on this machine.

    Args:
        workers: The worker nodes (names must be unique, letters, digits, ``_.-``).
        head: The head node; by default ``NodeSpec("head", {}, num_cpus=2)``.
        auth_token: Turn Ray's token authentication on with this token (every node and
            :meth:`driver_env` then carry it).
        tls: Turn Ray's mutual TLS on with these files (they must outlive the cluster).
        gcs_fault_tolerance: Keep the GCS tables in RocksDB under the cluster's directory
            (``RAY_gcs_storage=rocksdb``), so the head can restart without taking the workers down.
        system_env: Extra ``RAY_*`` settings for every node; :data:`FAST_FAILURE_DETECTION` by default.
        worker_ports: Size of each node's worker port range (one port per worker process).
        object_store_memory: Bytes of object store per node (Ray's minimum is 75 MiB).
        log_monitor: Run Ray's log monitor on each node (streams worker output to drivers; costs CPU).
        startup_timeout: Seconds a node may take to start (a busy 2-core machine needs tens).
        root: Directory for the nodes' temp dirs and logs; a new one under ``/tmp`` by default (it
            must be short: Ray's Unix socket paths live under it and may not exceed 107 bytes).
    """

    def __init__(
        self,
        workers: Iterable[NodeSpec],
        head: NodeSpec | None = None,
        *,
        auth_token: str | None = None,
        tls: RayTls | None = None,
        gcs_fault_tolerance: bool = False,
        system_env: Mapping[str, str] = FAST_FAILURE_DETECTION,
        worker_ports: int = 64,
        object_store_memory: int = 128 * 1024 * 1024,
        log_monitor: bool = False,
        startup_timeout: float = 180.0,
        root: Path | None = None,
    ) -> None:
        self._cli = ray_cli()
        head = head or NodeSpec("head")
        specs = [head, *workers]
        names = [spec.name for spec in specs]
        for name in names:
            if not _NAME.match(name):
                raise ValueError(f"node name {name!r}: use 1-40 letters, digits, '_', '.', '-'")
        if len(set(names)) != len(names):
            raise ValueError(f"node names must be unique: {names}")
        self.auth_token = auth_token
        self.tls = tls
        self.gcs_fault_tolerance = gcs_fault_tolerance
        self._system_env = dict(system_env)
        self._worker_ports = worker_ports
        self._object_store_memory = object_store_memory
        self._log_monitor = log_monitor
        self._startup_timeout = startup_timeout
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="prc-", dir="/tmp")) if root is None else root
        self.id = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.node_ip = node_ip()
        self._ports = _PortAllocator()
        self.gcs_port = self._ports.one()
        self.client_server_port = self._ports.one()
        self.dashboard_port = self._ports.one()
        self.dashboard_metrics_port = self._ports.one()
        self.autoscaler_metrics_port = self._ports.one()
        self._nodes: dict[str, _Node] = {}
        for index, spec in enumerate(specs):
            self._nodes[spec.name] = self._new_node(spec, head=index == 0, index=index)
        self._head_name = head.name
        self._drivers: list[DriverProcess] = []
        self.timings: dict[str, list[float]] = {}

    # ------------------------------------------------------------ addresses and environments
    @property
    def address(self) -> str:
        """The GCS address drivers and nodes connect to (``127.0.0.1:<port>``; the GCS listens on
        all interfaces)."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def head_name(self) -> str:
        """The head node's name."""
        return self._head_name

    @property
    def names(self) -> list[str]:
        """Every node's name, the head first."""
        return list(self._nodes)

    def spec(self, name: str) -> NodeSpec:
        """The spec a node was started with.

        Raises:
            KeyError: No such node.
        """
        return self._nodes[name].spec

    def _new_node(self, spec: NodeSpec, head: bool, index: int) -> _Node:
        low, high = self._ports.span(self._worker_ports)
        ports = _Ports(
            node_manager=self._ports.one(),
            object_manager=self._ports.one(),
            runtime_env_agent=self._ports.one(),
            metrics_agent=self._ports.one(),
            dashboard_agent_listen=self._ports.one(),
            metrics_export=self._ports.one(),
            min_worker=low,
            max_worker=high,
        )
        return _Node(spec=spec, head=head, temp_dir=self.root / f"n{index}", ports=ports)

    @property
    def token_file(self) -> Path | None:
        """The 0600 file holding the auth token (``RAY_AUTH_TOKEN_PATH``), if auth is on."""
        return self.root / "auth_token" if self.auth_token is not None else None

    def _clean_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _ENV_NOT_INHERITED}
        env["TCP_NODELAY"] = "1"
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        return env

    def _auth_env(self, token: str | None | _ClusterToken) -> dict[str, str]:
        if token is CLUSTER_TOKEN:
            if self.auth_token is None:
                return {"RAY_AUTH_MODE": "disabled"}
            assert self.token_file is not None
            return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_file)}
        if token is None:
            # No token anywhere: RAY_AUTH_MODE unset and a HOME without ~/.ray/auth_token (a local
            # ray.init() writes one there, and Ray would find it).
            home = self.root / "home-without-token"
            home.mkdir(exist_ok=True)
            return {"HOME": str(home)}
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}

    def driver_env(self, token: str | None | _ClusterToken = CLUSTER_TOKEN, tls: bool = True) -> dict[str, str]:
        """The environment of a driver process for this cluster.

        Args:
            token: :data:`CLUSTER_TOKEN` (the default) for the cluster's own settings; ``None`` for a
                driver with no token at all (``RAY_AUTH_MODE`` unset, a ``HOME`` with no
                ``~/.ray/auth_token``); a string for ``RAY_AUTH_MODE=token`` with that token.
            tls: Use the cluster's TLS files (if TLS is on); ``False`` for a plain client.
        """
        env = self._clean_env()
        env.update(self._auth_env(token))
        if tls and self.tls is not None:
            env.update(self.tls.env())
        env["RAY_ADDRESS"] = self.address
        return env

    def _node_env(self, node: _Node) -> dict[str, str]:
        env = self._clean_env()
        env.update(self._system_env)
        env.update(self._auth_env(node.token))
        if node.tls and self.tls is not None:
            env.update(self.tls.env())
        if node.head:
            # Prometheus ports of the head's dashboard and autoscaler processes (Ray: fixed 44227
            # and 44217, which a second head on the same machine could not bind).
            env["DASHBOARD_METRIC_PORT"] = str(self.dashboard_metrics_port)
            env["AUTOSCALER_METRIC_PORT"] = str(self.autoscaler_metrics_port)
        else:
            # Seconds (1 s a try) `ray start --address` waits for the GCS (Ray: 20): workers start
            # with the head, and rejoin a restarting head.
            env["RAY_gcs_server_port_wait_time_s"] = str(int(self._startup_timeout))
        if self.gcs_fault_tolerance:
            env["RAY_gcs_storage"] = "rocksdb"
            env["RAY_gcs_storage_path"] = str(self.root / "gcs")
        env[MARKER_ENV] = f"{self.id}:{node.spec.name}:{node.incarnation}"
        for key, value in node.extra_env.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def _command(self, node: _Node) -> list[str]:
        assert self._cli is not None
        ports = node.ports
        command = [
            *self._cli,
            "start",
            "--block",
            f"--node-name={node.spec.name}",
            f"--node-ip-address={self.node_ip}",
            f"--temp-dir={node.temp_dir}",
            f"--num-cpus={node.spec.num_cpus}",
            "--num-gpus=0",
            f"--resources={json.dumps(dict(node.spec.resources))}",
            f"--object-store-memory={self._object_store_memory}",
            f"--node-manager-port={ports.node_manager}",
            f"--object-manager-port={ports.object_manager}",
            f"--runtime-env-agent-port={ports.runtime_env_agent}",
            f"--dashboard-agent-grpc-port={ports.metrics_agent}",
            f"--dashboard-agent-listen-port={ports.dashboard_agent_listen}",
            f"--metrics-export-port={ports.metrics_export}",
            f"--min-worker-port={ports.min_worker}",
            f"--max-worker-port={ports.max_worker}",
            f"--include-log-monitor={str(self._log_monitor).lower()}",
            "--disable-usage-stats",
            "--log-style=record",
            "--log-color=false",
        ]
        if node.head:
            command += [
                "--head",
                f"--port={self.gcs_port}",
                f"--ray-client-server-port={self.client_server_port}",
                "--include-dashboard=false",
                f"--dashboard-port={self.dashboard_port}",
            ]
        else:
            command.append(f"--address={self.address}")
        return command

    # ------------------------------------------------------------ starting nodes
    def _time(self, what: str, seconds: float) -> None:
        self.timings.setdefault(what, []).append(round(seconds, 2))

    def _spawn(self, node: _Node) -> None:
        if self._cli is None:
            raise ClusterError("the ray CLI is not installed (pip package ray)")
        if node.process is not None and node.process.poll() is None:
            raise ClusterError(f"node {node.spec.name} is running")
        node.incarnation += 1
        node.node_id = None
        node.temp_dir.mkdir(parents=True, exist_ok=True)
        if node.head:
            # `ray start --head` refuses a port that its temp dir's ray_current_cluster names while any
            # process on this host has that --gcs-address on its command line, which the surviving
            # worker nodes' raylets do. The file only serves `ray.init()` without an address.
            (node.temp_dir / "ray_current_cluster").unlink(missing_ok=True)
        node.log = self.root / f"{node.spec.name}.{node.incarnation}.log"
        with node.log.open("wb") as log:
            node.process = subprocess.Popen(
                self._command(node),
                env=self._node_env(node),
                cwd=os.getcwd(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _wait_started(self, node: _Node, deadline: float) -> None:
        assert node.process is not None and node.log is not None
        while True:
            text = node.log.read_text(errors="replace") if node.log.exists() else ""
            if STARTED in text:
                break
            if node.process.poll() is not None:
                raise ClusterError(
                    f"node {node.spec.name}: `ray start` exited with {node.process.returncode}:\n{self._diagnose(node)}"
                )
            if time.monotonic() > deadline:
                raise ClusterError(f"node {node.spec.name} did not start in time:\n{self._diagnose(node)}")
            time.sleep(0.05)
        node.node_id = self._read_node_id(node)

    def _diagnose(self, node: _Node) -> str:
        """The tail of a node's ``ray start`` output, then the errors its GCS and raylet logged."""
        parts = [_tail(node.log)]
        logs = node.temp_dir / "session_latest" / "logs"
        for name in ("gcs_server.err", "gcs_server.out", "raylet.err", "raylet.out"):
            path = logs / name
            if path.exists():
                errors = [
                    line for line in path.read_text(errors="replace").splitlines() if " E " in line or " C " in line
                ]
                if errors:
                    parts.append(f"--- {path}\n" + "\n".join(errors[-10:]))
        return "\n".join(parts)

    def _read_node_id(self, node: _Node) -> str:
        raylet = self.raylet_pid(node.spec.name)
        cmdline = Path(f"/proc/{raylet}/cmdline").read_bytes().split(b"\0")
        for arg in cmdline:
            if arg.startswith(b"--node_id="):
                return arg.split(b"=", 1)[1].decode()
        raise ClusterError(f"node {node.spec.name}: the raylet's command line has no --node_id")

    def _start_nodes(self, names: list[str]) -> None:
        """Start the named nodes all at once (a worker waits for the GCS, up to ``startup_timeout``)
        and wait until each is registered.

        Raises:
            ClusterError: A node did not start; the named nodes are killed.
        """
        deadline = time.monotonic() + self._startup_timeout
        try:
            for name in names:
                self._spawn(self._nodes[name])
            for name in names:
                self._wait_started(self._nodes[name], deadline)
        except BaseException:
            for name in names:
                self._kill(self._nodes[name])
            raise

    def start(self) -> LocalRayCluster:
        """Start every node and wait until each is registered with the GCS.

        Raises:
            ClusterError: A node did not start (its log's tail is in the message); nothing is left
                running, but the cluster's directory (``root``, with every node's logs) stays.
        """
        if self.auth_token is not None:
            assert self.token_file is not None
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(self.auth_token)
        started = time.monotonic()
        try:
            self._start_nodes(self.names)
        except BaseException:
            self.stop(keep_files=True)
            raise
        self._time("start", time.monotonic() - started)
        return self

    # ------------------------------------------------------------ node ids and processes
    def node_ids(self) -> dict[str, str]:
        """Node name -> Ray NodeID (hex) of every running node (from its raylet's ``--node_id``)."""
        return {name: node.node_id for name, node in self._nodes.items() if node.node_id is not None}

    def node_id(self, name: str) -> str:
        """The Ray NodeID (hex) of a running node.

        Raises:
            KeyError: No such node, or it is not running.
        """
        node_id = self._nodes[name].node_id
        if node_id is None:
            raise KeyError(f"node {name} is not running")
        return node_id

    def node_name(self, node_id: str) -> str:
        """The name of the running node with this NodeID.

        Raises:
            KeyError: No running node has it.
        """
        for name, node in self._nodes.items():
            if node.node_id == node_id:
                return name
        raise KeyError(f"no running node has id {node_id}")

    def ports(self, name: str) -> dict[str, int]:
        """The TCP ports a node listens on (worker ports: the first and last of its range); the head
        adds ``gcs``, ``ray_client_server``, ``dashboard`` (not listening: the dashboard UI is off)
        and the Prometheus ports ``dashboard_metrics`` and ``autoscaler_metrics``.

        Raises:
            KeyError: No such node.
        """
        node = self._nodes[name]
        ports = {
            "node_manager": node.ports.node_manager,
            "object_manager": node.ports.object_manager,
            "runtime_env_agent": node.ports.runtime_env_agent,
            "dashboard_agent_grpc": node.ports.metrics_agent,
            "dashboard_agent_http": node.ports.dashboard_agent_listen,
            "metrics_export": node.ports.metrics_export,
            "min_worker": node.ports.min_worker,
            "max_worker": node.ports.max_worker,
        }
        if node.head:
            ports.update(
                gcs=self.gcs_port,
                ray_client_server=self.client_server_port,
                dashboard=self.dashboard_port,
                dashboard_metrics=self.dashboard_metrics_port,
                autoscaler_metrics=self.autoscaler_metrics_port,
            )
        return ports

    def _marker(self, name: str | None = None) -> str:
        return f"{self.id}:" if name is None else f"{self.id}:{name}:"

    def pids(self, name: str | None = None) -> set[int]:
        """Live processes of one node (or of the whole cluster): ``ray start``, GCS, raylet, agents,
        workers."""
        nodes = [self._nodes[name]] if name is not None else list(self._nodes.values())
        return _processes(self._marker(name), _roots(nodes))

    def raylet_pid(self, name: str) -> int:
        """PID of a node's raylet (the ``raylet`` child of its ``ray start``).

        Raises:
            ClusterError: The node has no raylet running.
        """
        for pid in sorted(self.pids(name)):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                    return pid
        raise ClusterError(f"node {name} has no raylet running")

    # ------------------------------------------------------------ failures
    def _kill(self, node: _Node) -> None:
        _kill_all(self._marker(node.spec.name), _roots([node]))
        if node.process is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=10)
        node.node_id = None

    def kill_node(self, name: str) -> None:
        """Take a node down like a power cut: SIGKILL its raylet, agents, workers and ``ray start``
        at once (after freezing them with SIGSTOP, so none reacts). The GCS notices through its
        health checks (about 3 s with :data:`FAST_FAILURE_DETECTION`).

        Raises:
            KeyError: No such node.
            ClusterError: A process survived.
        """
        started = time.monotonic()
        self._kill(self._nodes[name])
        self._time("kill node", time.monotonic() - started)

    def restart_node(self, name: str) -> str:
        """Start a killed (or stopped) node again with the same name, resources and ports; Ray gives
        it a new NodeID, which this returns.

        Raises:
            KeyError: No such node.
            ClusterError: It is still running, or did not start.
        """
        started = time.monotonic()
        node_id = self._restart(name)
        self._time("restart node", time.monotonic() - started)
        return node_id

    def _restart(self, name: str) -> str:
        node = self._nodes[name]
        if node.process is not None and node.process.poll() is None:
            raise ClusterError(f"node {name} is running; kill_node() it first")
        self._start_nodes([name])
        return self.node_id(name)

    def add_node(
        self,
        spec: NodeSpec,
        *,
        token: str | None | _ClusterToken = CLUSTER_TOKEN,
        tls: bool = True,
        extra_env: Mapping[str, str | None] | None = None,
        timeout: float | None = None,
    ) -> str:
        """Start one more worker node and return its NodeID.

        Args:
            spec: The new node.
            token: Its token, as for :meth:`driver_env` (``None`` or a wrong one: a node that must
                not get in).
            tls: Give it the cluster's TLS files (if TLS is on).
            extra_env: Environment changes for its processes (``None`` removes a variable), e.g.
                :data:`FAIL_FAST_CONNECT`.
            timeout: Seconds to wait for it (the cluster's ``startup_timeout`` by default).

        Raises:
            ValueError: The name is taken.
            ClusterError: It did not start; it is then forgotten and none of its processes is left.
        """
        if spec.name in self._nodes or not _NAME.match(spec.name):
            raise ValueError(f"node name {spec.name!r} is taken or invalid")
        node = self._new_node(spec, head=False, index=len(self._nodes))
        node.token, node.tls = token, tls
        node.extra_env = dict(extra_env or {})
        self._nodes[spec.name] = node
        deadline = time.monotonic() + (self._startup_timeout if timeout is None else timeout)
        try:
            self._spawn(node)
            self._wait_started(node, deadline)
        except BaseException:
            self._kill(node)
            self._nodes.pop(spec.name)
            raise
        return self.node_id(spec.name)

    def session_dir(self, name: str) -> Path:
        """A node's current Ray session directory (``logs/`` holds ``gcs_server.err``, ``raylet.out``...).

        Raises:
            KeyError: No such node.
        """
        return self._nodes[name].temp_dir / "session_latest"

    def node_log(self, name: str) -> str:
        """The output of a node's latest ``ray start``."""
        return _tail(self._nodes[name].log, lines=10_000)

    def stop_head(self) -> None:
        """SIGKILL the head node (GCS, raylet, agents, workers), like a crash of its machine.

        Without ``gcs_fault_tolerance`` the cluster is then lost: Ray keeps the GCS tables in the
        GCS's memory, so a new head is a new cluster (new cluster ID) and the worker raylets exit (or
        fail to register). With it, the worker nodes keep running and reconnect to the next head
        within ``RAY_gcs_rpc_server_reconnect_timeout_s`` (60 s by default).
        """
        started = time.monotonic()
        self._kill(self._nodes[self._head_name])
        self._time("stop head", time.monotonic() - started)

    def start_head(self) -> str:
        """Start the head again on the same GCS port and return its new NodeID.

        Raises:
            ClusterError: It is running, or did not start.
        """
        started = time.monotonic()
        node_id = self._restart(self._head_name)
        self._time("start head", time.monotonic() - started)
        return node_id

    def restart_head(self) -> None:
        """Restart the head. With ``gcs_fault_tolerance`` only the head restarts and the workers
        stay; without it the whole cluster restarts (same names, resources and ports, new NodeIDs),
        since worker nodes do not survive losing an in-memory GCS.

        Raises:
            ClusterError: A node did not start.
        """
        started = time.monotonic()
        if self.gcs_fault_tolerance:
            self._kill(self._nodes[self._head_name])
            self._restart(self._head_name)
        else:
            self._kill_everything()
            self._start_nodes(self.names)
        self._time("restart head", time.monotonic() - started)

    # ------------------------------------------------------------ inspection through the GCS
    def alive_nodes(self, timeout: float = 120.0) -> dict[str, str]:
        """NodeID -> node name of every node the GCS holds alive (asked from a subprocess, which
        uses the cluster's token and TLS).

        Raises:
            ClusterError: The GCS could not be asked.
        """
        code = (
            "import json, os\n"
            "from ray._raylet import GcsClient\n"
            "from ray.core.generated.gcs_pb2 import GcsNodeInfo\n"
            "infos = GcsClient(address=os.environ['RAY_ADDRESS']).get_all_node_info(timeout=60)\n"
            "alive = GcsNodeInfo.GcsNodeState.ALIVE\n"
            "print(json.dumps({i.node_id.hex(): i.node_name for i in infos.values() if i.state == alive}))\n"
        )
        done = self.run_driver(code, timeout=timeout)
        if done.returncode != 0:
            raise ClusterError(f"could not list the nodes:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])

    def wait_for(self, predicate: Any, timeout: float = 120.0, interval: float = 0.5, what: str = "") -> Any:
        """Call ``predicate()`` until it returns something truthy, and return that.

        Raises:
            TimeoutError: It did not within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"not within {timeout} s: {what or predicate}")
            time.sleep(interval)

    # ------------------------------------------------------------ drivers
    def driver(self, token: str | None | _ClusterToken = CLUSTER_TOKEN, tls: bool = True) -> DriverProcess:
        """A :class:`DriverProcess` with this cluster's environment (``RAY_ADDRESS`` set, so
        ``ray.init()`` connects here); see :meth:`driver_env` for the arguments."""
        log = self.root / f"driver-{secrets.token_hex(3)}.log"
        driver = DriverProcess(self.driver_env(token, tls), log)
        self._drivers.append(driver)
        return driver

    def run_driver(
        self,
        code: str,
        token: str | None | _ClusterToken = CLUSTER_TOKEN,
        tls: bool = True,
        timeout: float = 120.0,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python -c code`` with this cluster's environment; see :meth:`driver_env`.

        Raises:
            subprocess.TimeoutExpired: It ran longer than ``timeout`` seconds.
        """
        env = self.driver_env(token, tls)
        env.update(extra_env or {})
        return subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout, check=False
        )

    # ------------------------------------------------------------ stopping
    def _kill_everything(self) -> None:
        _kill_all(self._marker(), _roots(self._nodes.values()))
        for node in self._nodes.values():
            if node.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(timeout=10)
            node.node_id = None

    def stop(self, keep_files: bool = False) -> None:
        """End the drivers :meth:`driver` started, SIGKILL every process of this cluster (found by
        marker and parentage, never by name), check that none is left, and delete the cluster's directory (unless ``keep_files``, or the
        caller gave ``root``).

        Raises:
            ClusterError: A process survived.
        """
        started = time.monotonic()
        for driver in self._drivers:
            driver.close(timeout=10)
        self._drivers.clear()
        self._kill_everything()
        left = self.pids()
        if left:
            raise ClusterError(f"processes of cluster {self.id} survive: {sorted(left)}")
        if self._own_root and not keep_files:
            shutil.rmtree(self.root, ignore_errors=True)
        self._time("stop", time.monotonic() - started)

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
