"""The main-side half of the Dask backend: :class:`DaskBackend` (runs in main).

It never imports ``distributed``: it starts the Dask Boss
(``python -m bossworker.dask.boss``) and hands main its socket.  What the
backend does and how it differs from the local one is in
:mod:`bossworker.dask`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pickle
import socket
import subprocess
from typing import Any

from ..backend import BossHandle, register_main_socket
from ..config import BossConfig
from ..errors import InvalidArgumentError, SerializationError
from ..payload import Segments
from .launch import DaskBossOptions, start_module

__all__ = ["DaskBackend"]

# The module the Dask Boss runs (python -m).
BOSS_MODULE = "bossworker.dask.boss"


class DaskBackend:
    """Start the pool's Boss so that its workers run on a Dask cluster.

    * ``DaskBackend("tcp://host:8786")`` (or ``"tls://..."`` with
      ``security=distributed.Security(...)``): an existing cluster;
    * ``DaskBackend(client=client)``: the scheduler that ``client`` is
      connected to, with the client's security;
    * ``DaskBackend(**local_cluster_kwargs)``: a new
      ``distributed.LocalCluster`` of ``worker_count`` single-threaded worker
      processes bound to 127.0.0.1 without a dashboard (keyword arguments
      override these), owned by the pool and closed with it.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        client: Any = None,
        security: Any = None,
        **local_cluster_kwargs: Any,
    ) -> None:
        if client is not None:
            if address is not None:
                raise InvalidArgumentError("give DaskBackend an address or a client, not both")
            address = str(client.scheduler.address)
            if security is None:
                security = client.security
        if address is not None and not isinstance(address, str):
            raise InvalidArgumentError(f"address must be a string, not {type(address).__name__}")
        if address is not None and local_cluster_kwargs:
            names = ", ".join(sorted(local_cluster_kwargs))
            raise InvalidArgumentError(f"LocalCluster options ({names}) make no sense with an address")
        self.address = address
        self.security = security
        self.local_cluster_kwargs = dict(local_cluster_kwargs)

    # Dask workers may be other machines: large payloads travel in frames.
    shares_memory = False

    def __repr__(self) -> str:
        where = self.address or "a local cluster"
        return f"<DaskBackend {where}>"

    def start(self, config: BossConfig) -> tuple[socket.socket, BossHandle]:
        import cloudpickle  # a dependency of distributed

        if config.max_worker_memory is not None:
            raise InvalidArgumentError(
                "max_worker_memory= is not supported with the Dask backend (its Boss does not watch "
                "the memory of Dask's workers); use Dask's own per-worker memory_limit instead"
            )
        # Workers answer inline: main cannot map a file on another machine.
        worker = dataclasses.replace(config.worker, segments=Segments(None))
        try:
            spec = cloudpickle.dumps(worker)
        except Exception as exc:
            raise SerializationError(f"the handlers cannot be sent to Dask workers: {exc}") from exc
        options = DaskBossOptions(
            address=self.address,
            security=self.security,
            local_cluster_kwargs=self.local_cluster_kwargs,
            spec=spec,
            segment_prefix=config.worker.segments.prefix,
            worker_count=config.worker_count,
            read_size=config.worker.read_size,
            max_jobs=config.worker.max_jobs,
            exit_limit=config.exit_limit,
            main_pid=config.main_pid,
        )
        # A new interpreter (exec, never a bare fork: main may hold threads,
        # its own or Dask's), and not multiprocessing's spawn either, which
        # would re-run the user's main module in the Dask Boss.
        main_end, boss_end = socket.socketpair()
        try:
            proc = start_module(BOSS_MODULE, boss_end.fileno(), {"options": pickle.dumps(options)})
        finally:
            # The Dask Boss's death must show as end-of-file on main's end.
            boss_end.close()
        # A local Boss forked later closes it (see backend.LocalBackend).
        register_main_socket(main_end)
        return main_end, _ProcessHandle(proc)


class _ProcessHandle:
    """A :class:`~bossworker.backend.BossHandle` for a ``subprocess.Popen``."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def is_alive(self) -> bool:
        return self._proc.poll() is None

    def join(self, timeout: float | None = None) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout)

    def terminate(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.terminate()

    def kill(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()

    def close(self) -> None:
        """Nothing to release: the Popen's only pipe (stdin) is closed at start."""

    @property
    def exitcode(self) -> int | None:
        return self._proc.returncode
