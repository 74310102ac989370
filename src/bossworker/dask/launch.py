"""Starting the Dask backend's processes, and what they are told at birth.

Two kinds of process are started as fresh interpreters running one of our
modules (``python -m``), never forked (the parent may hold threads: main's,
Dask's) and never by multiprocessing's spawn (which would re-run the user's
main module in them):

* main starts the *Dask Boss*: ``python -m bossworker.dask.boss``;
* the plugin on each Dask worker starts *our workers*:
  ``python -m bossworker.dask.child``.

Each gets one socket (passed by descriptor number) and a *boot* dict, pickled
on its standard input: the parent's import path, the descriptor, and what
that process needs.  This module is imported by main, the Dask Boss, the
plugin and the child, so it imports nothing of Dask's.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["DaskBossOptions", "read_boot", "start_module"]

# Where the ``bossworker`` package lives: a new interpreter must be able to
# import it before it has read the parent's import path.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass(frozen=True, slots=True)
class DaskBossOptions:
    """What the Dask Boss process needs. Picklable (the spec is bytes)."""

    address: str | None
    security: Any  # distributed.Security | None
    local_cluster_kwargs: dict[str, Any]
    spec: bytes  # the WorkerSpec, cloudpickled in main; never unpickled by the Boss
    segment_prefix: str | None  # where main puts large jobs (Segments): read here
    worker_count: int
    read_size: int
    max_jobs: int | None
    exit_limit: float  # how long a worker may take to run its exit_handler (BossConfig.exit_limit)
    main_pid: int


def start_module(module: str, fd: int, boot: dict[str, Any]) -> subprocess.Popen[bytes]:
    """Start ``python -m module`` with descriptor ``fd`` passed on and
    ``boot`` (plus this process's import path and ``fd``) pickled on its
    standard input, which is then closed.  Does not wait for it.

    ``PYTHONPATH`` names our package's directory first so that the child
    can import ``module`` at all; :func:`read_boot` gives the child back the
    value it would have had, so handlers see the environment unchanged."""
    inherited = os.environ.get("PYTHONPATH")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_ROOT, *filter(None, [inherited])])
    data = pickle.dumps(
        {**boot, "path": list(sys.path), "fd": fd, "pythonpath": inherited},
        protocol=pickle.HIGHEST_PROTOCOL,
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", module],
        stdin=subprocess.PIPE,
        pass_fds=(fd,),
        close_fds=True,
        env=env,
    )
    assert proc.stdin is not None
    with contextlib.suppress(OSError):  # it died at once: its parent learns so otherwise
        proc.stdin.write(data)
        proc.stdin.close()
    return proc


def read_boot() -> dict[str, Any]:
    """In a process :func:`start_module` started: read the boot dict, take
    the parent's import path and ``PYTHONPATH``, and put ``/dev/null`` on
    standard input."""
    boot: dict[str, Any] = pickle.load(sys.stdin.buffer)
    sys.path[:] = boot["path"]
    if boot["pythonpath"] is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = boot["pythonpath"]
    stdin_from_devnull()
    return boot


def stdin_from_devnull() -> None:
    """Point descriptor 0 at ``/dev/null`` (the boot pipe is read)."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
