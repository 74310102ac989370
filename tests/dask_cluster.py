"""A real Dask cluster for the tests: ``dask scheduler`` + ``dask worker``.

Both are started from the command line, bound to 127.0.0.1 (dashboards
included: ``--no-dashboard`` alone would still listen on every interface),
with this directory on the workers' import path so that they (and our
children on them) can import the test handlers.  :meth:`DaskCluster.stop`
stops the workers before the scheduler: stopping both at once makes the
workers retry for seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from waiting import wait_until

TESTS = str(Path(__file__).resolve().parent)
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


class DaskCluster:
    """A scheduler and one ``dask worker`` process with ``n_workers`` workers."""

    def __init__(self, directory: Path, n_workers: int = 2, tls: bool = False) -> None:
        self.directory = directory
        self.n_workers = n_workers
        self.security: Any = None
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.workers: subprocess.Popen[bytes] | None = None
        self.address = ""
        self._tls_args: list[str] = []
        if tls:
            self._make_certificates()

    # -- life --------------------------------------------------------------

    def start(self) -> DaskCluster:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        scheduler_file = self.directory / "scheduler.json"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([TESTS, *filter(None, [env.get("PYTHONPATH")])])
        protocol = ["--protocol", "tls"] if self._tls_args else []
        self.scheduler = self._popen(
            [
                "scheduler",
                "--host", "127.0.0.1",
                "--port", "0",
                "--dashboard-address", "127.0.0.1:0",
                "--scheduler-file", str(scheduler_file),
                *protocol,
                *self._tls_args,
            ],
            env,
            "scheduler.log",
        )  # fmt: skip
        wait_until(lambda: self._read_address(scheduler_file), START_TIMEOUT, "the scheduler's address")
        self.workers = self._popen(
            [
                "worker", self.address,
                "--nworkers", str(self.n_workers),
                "--nthreads", "1",
                "--host", "127.0.0.1",
                "--dashboard-address", "127.0.0.1:0",
                *self._tls_args,
            ],
            env,
            "workers.log",
        )  # fmt: skip
        self.wait_for_workers(self.n_workers)

    def _popen(self, args: list[str], env: dict[str, str], log: str) -> subprocess.Popen[bytes]:
        with open(self.directory / log, "wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "dask", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.directory,
            )

    def _read_address(self, scheduler_file: Path) -> bool:
        assert self.scheduler is not None
        if self.scheduler.poll() is not None:
            raise AssertionError(f"dask scheduler exited:\n{self.log('scheduler.log')}")
        try:
            self.address = json.loads(scheduler_file.read_text())["address"]
        except (OSError, ValueError, KeyError):
            return False
        return True

    def wait_for_workers(self, n: int) -> None:
        """Block until the scheduler has ``n`` workers (a client with a deadline)."""
        from distributed import Client

        with Client(self.address, security=self.security, timeout=START_TIMEOUT) as client:
            client.wait_for_workers(n, timeout=START_TIMEOUT)

    def stop(self) -> None:
        """Workers first (gracefully, then killed), then the scheduler."""
        for proc in (self.workers, self.scheduler):
            if proc is None or proc.poll() is not None:
                continue
            family = _family(proc.pid)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _gone, alive = psutil.wait_procs(family, timeout=STOP_TIMEOUT)
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    p.kill()

    def log(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return (self.directory / name).read_text(errors="replace")[-5000:]
        return ""

    # -- looking inside ------------------------------------------------------

    def worker_processes(self) -> list[psutil.Process]:
        """The Dask worker processes (children of the ``dask worker`` nanny process)."""
        assert self.workers is not None
        try:
            return psutil.Process(self.workers.pid).children()
        except psutil.NoSuchProcess:
            return []

    def pool_children(self) -> list[psutil.Process]:
        """Processes started on the Dask workers (our pools' worker processes)."""
        found = []
        for worker in self.worker_processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                found += [p for p in worker.children() if "resource_tracker" not in _cmdline(p)]
        return found

    def leftovers(self) -> dict[str, Any]:
        """What pools left on the cluster: plugins still registered on the
        scheduler, and threads of the workers still running our code."""
        from distributed import Client

        with Client(self.address, security=self.security, timeout=30) as client:
            plugins = client.run_on_scheduler(_our_plugins)
            threads = client.run(_threads_in_our_code)
        return {"plugins": plugins, "threads": {w: t for w, t in threads.items() if t}}

    # -- TLS -------------------------------------------------------------------

    def _make_certificates(self) -> None:
        """One self-signed certificate for every role, as files for the CLI."""
        from distributed import Security

        temporary = Security.temporary()
        ca = self.directory / "ca.pem"
        cert = self.directory / "cert.pem"
        key = self.directory / "key.pem"
        ca.write_text(temporary.tls_ca_file)
        cert.write_text(temporary.tls_scheduler_cert)
        key.write_text(temporary.tls_scheduler_key)
        key.chmod(0o600)
        self._tls_args = ["--tls-ca-file", str(ca), "--tls-cert", str(cert), "--tls-key", str(key)]
        self.security = Security(
            tls_ca_file=str(ca),
            tls_client_cert=str(cert),
            tls_client_key=str(key),
            require_encryption=True,
        )


def _family(pid: int) -> list[psutil.Process]:
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def _our_plugins(dask_scheduler: Any) -> list[str]:
    return [name for name in dask_scheduler.worker_plugins if name.startswith("bossworker-")]


def _threads_in_our_code() -> list[str]:
    """Threads of this process with a frame of bossworker's on their stack."""
    import threading
    import traceback

    names = {t.ident: t.name for t in threading.enumerate()}
    found = []
    for ident, frame in sys._current_frames().items():
        stack = traceback.extract_stack(frame)
        if any("bossworker" in f.filename for f in stack):
            found.append(f"{names.get(ident, ident)}: {stack[-1].filename}:{stack[-1].lineno}")
    return found
