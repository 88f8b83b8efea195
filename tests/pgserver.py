"""Fixture `postgres`: a real PostgreSQL server for the session, on a free loopback port
in a temp dir, yielding its DSN. It runs as an unprivileged user (postgres refuses root)
and is stopped (fast shutdown of the PID started here) and removed at the end.

Register with `pytest_plugins = ["pgserver"]` in tests/conftest.py, or import the fixture
into a test module: `from pgserver import postgres`."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

INSTALL_HINT = "install PostgreSQL: apt-get install -y postgresql"


def find_bindir() -> Path:
    """The directory holding initdb and postgres."""
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0, reverse=True)
    for d in candidates:
        if os.access(os.path.join(d, "initdb"), os.X_OK) and os.access(os.path.join(d, "postgres"), os.X_OK):
            return Path(d)
    pytest.fail(f"PostgreSQL server binaries (initdb, postgres) not found; {INSTALL_HINT}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> dict:
    """Popen arguments that drop root to the postgres user (or nobody); none otherwise."""
    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    pytest.fail("running as root and no unprivileged user (postgres or nobody) to run PostgreSQL")


class PgServer:
    """One PostgreSQL server we own."""

    def __init__(self, root: Path):
        self.root = root
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.port = free_port()
        self.dsn = f"postgresql://shoal@127.0.0.1:{self.port}/postgres"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        bindir = find_bindir()
        who = _run_as()
        if who:
            os.chown(self.root, who["user"], who["group"])
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "HOME": str(self.root)}
        init = subprocess.run([str(bindir / "initdb"), "-D", str(self.data), "-U", "shoal", "--auth=trust",
                               "-E", "UTF8", "--locale=C", "--no-sync"],
                              capture_output=True, text=True, env=env, cwd=self.root, **who)
        if init.returncode != 0:
            pytest.fail(f"initdb failed ({INSTALL_HINT} if it is missing):\n{init.stdout}\n{init.stderr}")
        with open(self.log, "wb") as log:
            if who:
                os.chown(self.log, who["user"], who["group"])
            self.proc = subprocess.Popen(
                [str(bindir / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.root),
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "autovacuum=off", "-c", "max_parallel_workers_per_gather=0",
                 "-c", "max_connections=100"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root, **who)
        self._wait_ready()

    def _wait_ready(self, timeout_s: float = 30) -> None:
        import psycopg
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"postgres exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with psycopg.connect(self.dsn, connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"postgres did not accept connections in {timeout_s}s:\n"
                                f"{self.log.read_text()[-3000:]}")
                time.sleep(0.1)

    def stop(self) -> None:
        """Fast shutdown (what `pg_ctl stop -m fast` sends) of the postmaster we started."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None


@pytest.fixture(scope="session")
def postgres():
    """DSN of a real PostgreSQL server (superuser `shoal`, database `postgres`)."""
    root = Path(tempfile.mkdtemp(prefix="shoal-pg-"))
    server = PgServer(root)
    try:
        server.start()
        yield server.dsn
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
