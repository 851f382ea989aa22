"""Servers of a test's own — a PostgreSQL cluster and a Redis — in a temporary directory on a free port,
for fault tests to stop, crash and restart. A test never stops, restarts or reconfigures the machine's
own servers: a developer's database must survive their test run."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from tests.serving import free_port


def postgres_available() -> str | None:
    """None when a throwaway cluster can be made here, else why not."""
    if not shutil.which("pg_config"):
        return "needs pg_config (PostgreSQL's server binaries) to make a throwaway cluster"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "initdb refuses to run as root, and runuser is missing"
    return None


def wait_for(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


class ThrowawayPostgres:
    """initdb into a fresh directory, then pg_ctl start/stop on a free loopback port."""

    def __init__(self) -> None:
        self.bindir = Path(subprocess.check_output(["pg_config", "--bindir"], text=True).strip())
        self.root = Path(tempfile.mkdtemp(prefix="otp-pg-"))
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_owner: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root: the cluster belongs to the postgres user
            shutil.chown(self.root, "postgres")
            self._as_owner = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.root / "data"), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self._as_owner, str(self.bindir / tool), *args], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.root / "data"), "-o", options, "-l", str(self.root / "log"), "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast`: a clean shutdown that disconnects everyone; `immediate`: a crash."""
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", mode, "-w", "stop")

    def ready(self) -> bool:
        probe = subprocess.run([str(self.bindir / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port)])
        return probe.returncode == 0

    def remove(self) -> None:
        if self.ready():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class ThrowawayRedis:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        self.command += ["--appendonly", "no", "--dir", str(directory)]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ping = ["redis-cli", "-p", str(self.port), "ping"]
        wait_for(lambda: subprocess.run(ping, capture_output=True, text=True).stdout.strip() == "PONG", 10)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class StallingProxy:
    """A TCP front for a server of the test's own that can stall: while `stalled`, it accepts connections and
    reads what they send, but passes nothing on and answers nothing — a Redis that is SIGSTOPped, or
    overloaded, as its clients see it; otherwise it forwards both ways. It counts the connections and bytes
    that reach it, so a test can tell whether a client still tries, without timing anything."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.stalled = False
        self.connections = self.received = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        threading.Thread(target=self._accept, daemon=True).start()

    def traffic(self) -> tuple[int, int]:
        """(connections accepted, bytes received) so far."""
        with self._lock:
            return self.connections, self.received

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        upstream = None
        try:
            if not self.stalled:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
                threading.Thread(target=self._answer, args=(upstream, conn), daemon=True).start()
            while data := conn.recv(65536):
                with self._lock:
                    self.received += len(data)
                if upstream is not None and not self.stalled:  # a connection made before a stall stalls too
                    upstream.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()
            if upstream is not None:
                upstream.close()

    @staticmethod
    def _answer(upstream: socket.socket, conn: socket.socket) -> None:
        try:
            while data := upstream.recv(65536):
                conn.sendall(data)
        except OSError:
            pass
