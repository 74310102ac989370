"""One of our worker processes on a Dask worker: ``python -m bossworker.dask.child``.

Started by the pool's plugin (:mod:`bossworker.dask.plugin`) through
:func:`bossworker.dask.launch.start_module`; it runs our own worker loop
(:func:`bossworker.worker.run_worker`) on the socket it was given, so
``init_handler`` / ``exit_handler``, timeouts and crashes behave as they do
locally.  Nothing of Dask's is imported here.
"""

from __future__ import annotations

import contextlib
import pickle
import signal
import socket

from ..errors import handlers_not_unpicklable_error
from ..jobs import text_frame
from ..process import exit_now
from ..protocol import Kind
from ..worker import EXIT_INIT_FAILED, describe_exception, run_worker
from .launch import read_boot

__all__ = ["main"]


def main() -> None:
    """The body of the process. Never returns: it ends in ``os._exit``."""
    boot = read_boot()
    # The Dask worker's thread may have had signals blocked; we must not.
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    sock = socket.socket(fileno=boot["fd"])
    try:
        spec = pickle.loads(boot["spec"])
    except BaseException as exc:  # noqa: BLE001 - reported as the init failure
        text = handlers_not_unpicklable_error(describe_exception(exc))
        with contextlib.suppress(OSError):
            sock.sendall(text_frame(Kind.INIT_FAILED, 0, text))
        exit_now(EXIT_INIT_FAILED)
    run_worker(sock, spec, boot["parent_pid"], ())


if __name__ == "__main__":
    main()
