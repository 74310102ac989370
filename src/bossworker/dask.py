"""Run the pool's workers on a Dask cluster: :class:`DaskBackend`.

::

    from bossworker import BossWorkerAsync
    from bossworker.dask import DaskBackend

    bw = BossWorkerAsync(work, init_handler=init, global_timeout=30,
                         backend=DaskBackend("tcp://scheduler:8786"))

``DaskBackend()`` starts a private local cluster (``worker_count`` worker
processes on 127.0.0.1) and closes it with the pool;
``DaskBackend(client=existing_client)`` uses that client's scheduler (and its
security), and never shuts down a cluster it did not start.

The public class does not change: main talks to a *Dask Boss* process over
the same socket and frames as to the local Boss.  The Dask Boss turns each
job into one Dask task; on every Dask worker, one child process per worker
thread runs our own worker loop, so ``init_handler`` / ``exit_handler`` run
once per worker process, a timeout kills only that child (even in C code),
and a crash in a handler is the job's ERROR.  See :mod:`bossworker.dask_boss`.

What differs from the local backend:

* **Latency and throughput are Dask's.** Every job goes through the Dask
  scheduler: a lone job takes as long as a plain ``client.submit(...)
  .result()`` (about 10 ms on a loopback cluster: Dask's client sends its
  messages in batches every 10 ms) instead of a fraction of a millisecond,
  and a burst runs at the rate the scheduler sustains (hundreds to a few
  thousand jobs per second).  ``bench/dask_overhead.py`` measures our cost
  on top of plain Dask: within a few per cent.
* **At least once, if a whole Dask worker dies.** If a Dask worker
  *process* dies (not our child: the Dask worker itself), the scheduler runs
  its task again elsewhere (up to ``distributed.scheduler.allowed-failures``
  times; after that the job's result is an ERROR), so that job can run more
  than once.  A job that crashes or overruns inside our child runs exactly
  once, as locally.
* **Parallelism is the cluster's.** With an existing cluster,
  ``worker_count`` is not used: every Dask worker thread gets one of our
  worker processes (``init_handler`` runs once per thread, so once per Dask
  worker with ``--nthreads 1``).  With ``DaskBackend()``, ``worker_count``
  is the number of single-threaded Dask worker processes.
* **Handlers travel by cloudpickle**, so lambdas and closures work too; the
  modules they come from must be importable on the Dask workers, and so
  must ``bossworker`` itself.  ``start_method`` is not used: the Dask Boss is
  a fresh interpreter started with ``subprocess`` (so the main module is
  never re-run in it), and so are our workers on the Dask workers.
* **No shared memory.** Large jobs and results travel through Dask (a job
  over 1 MiB is scattered to a worker first), not through ``/dev/shm``.
* A worker that fails in ``init_handler`` after the pool started is retried
  a few times by the job that needs it; then that job's result is an ERROR
  (the local Boss would keep trying while other workers serve the queue).
* ``stats()`` takes a round trip to every Dask worker.
* If the Dask Boss itself is SIGKILLed, its workers on the cluster notice
  within about 5 seconds (its lease task disappears from the scheduler),
  kill their processes and unregister themselves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import signal
import socket
import subprocess
import sys
from typing import Any

from .backend import BossHandle, register_main_socket
from .config import BossConfig
from .errors import InvalidArgumentError, SerializationError
from .payload import Segments
from .process import exit_now
from .protocol import Kind, encode
from .worker import EXIT_INIT_FAILED, describe_exception, run_worker

__all__ = ["CHILD_BOOT", "DaskBackend", "child_main"]

# A child's first words on a Dask worker, run by ``python -c``: the Dask
# worker's import path first, then our worker loop (nothing of Dask's is
# imported in the child).
CHILD_BOOT = (
    "import pickle, sys\n"
    "boot = pickle.load(sys.stdin.buffer)\n"
    "sys.path[:] = boot['path']\n"
    "from bossworker.dask import child_main\n"
    "child_main(boot)\n"
)

# The Dask Boss's first words, run by ``python -c``: main's import path first,
# then our code and the options.
_BOSS_BOOT = (
    "import pickle, sys\n"
    "boot = pickle.load(sys.stdin.buffer)\n"
    "sys.path[:] = boot['path']\n"
    "from bossworker.dask_boss import boss_main\n"
    "boss_main(boot)\n"
)


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

        from .dask_boss import DaskBossOptions

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
            main_pid=config.main_pid,
        )
        # A new interpreter (exec, never a bare fork: main may hold threads,
        # its own or Dask's), and not multiprocessing's spawn either, which
        # would re-run the user's main module in the Dask Boss.
        main_end, boss_end = socket.socketpair()
        boot = pickle.dumps(
            {"path": list(sys.path), "fd": boss_end.fileno(), "options": pickle.dumps(options)},
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        try:
            proc = subprocess.Popen(
                [sys.executable, "-c", _BOSS_BOOT],
                stdin=subprocess.PIPE,
                pass_fds=(boss_end.fileno(),),
                close_fds=True,
            )
        finally:
            # The Dask Boss's death must show as end-of-file on main's end.
            boss_end.close()
        assert proc.stdin is not None
        with contextlib.suppress(OSError):  # if it died at once, main sees EOF
            proc.stdin.write(boot)
            proc.stdin.close()
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


def _stdin_from_devnull() -> None:
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)


def child_main(boot: dict[str, Any]) -> None:
    """The body of one of our worker processes on a Dask worker (started by
    the pool's plugin, see :mod:`bossworker.dask_boss`). Never returns."""
    _stdin_from_devnull()
    # The Dask worker's thread may have had signals blocked; we must not.
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    sock = socket.socket(fileno=boot["fd"])
    try:
        spec = pickle.loads(boot["spec"])
    except BaseException as exc:  # noqa: BLE001 - reported as the init failure
        text = (
            "BossWorkerAsync: the handlers could not be unpickled on the Dask worker "
            f"(is their module importable there?): {describe_exception(exc)}"
        )
        with contextlib.suppress(OSError):
            sock.sendall(encode(Kind.INIT_FAILED, 0, text.encode("utf-8", "replace")))
        exit_now(EXIT_INIT_FAILED)
    run_worker(sock, spec, boot["parent_pid"], ())
