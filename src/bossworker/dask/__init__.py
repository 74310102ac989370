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
and a crash in a handler is the job's ERROR.

The package, one module per process it runs in::

    __init__.py   main      this page; DaskBackend
    backend.py    main      DaskBackend: starts the Dask Boss, hands main its socket
    launch.py     all       starting ``python -m`` children; their boot; DaskBossOptions
    child.py      child     our worker process on a Dask worker (python -m)
    boss.py       Dask Boss the asyncio driver of the shared BossCore (python -m)
    fleet.py      Dask Boss the core's fleet: the cluster, batching, the lease
    plugin.py     Dask worker the plugin, its slots and children (WorkerLinks), the tasks

What main hears is said by ``bossworker.boss.core.BossCore``, the same core
the local Boss drives; what a slot says to its child follows
``bossworker.boss.link.WorkerLink``, as the local Boss's workers do.

Imports: backend -> launch; child -> launch; boss -> fleet -> plugin ->
launch (and boss -> launch); boss, fleet and plugin -> ``bossworker.boss.core``
/ ``.link`` (sans-IO, no process code).  Only fleet and plugin import
``distributed``, and boss imports fleet only once its boot has set the
import path.

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
  by the job that needs it, with the local Boss's back-off, until the
  failures persist by the local rule (3 init errors in a row, or 10 starts
  killed by a signal); then that job's result is an ERROR (the local Boss
  would keep trying while other workers serve the queue).
* **Not supported, and refused at once** with an ``InvalidArgumentError``:
  ``retries=`` (the pool's or ``add_work``'s: Dask reruns a dead Dask
  worker's task by its own rules) and ``max_worker_memory=`` (use Dask's
  per-worker ``memory_limit``).
* **``cancel()`` never drops a job** (it returns False): a job goes to the
  scheduler as soon as the Dask Boss reads it, so none waits to be dropped.
* ``stats()`` takes a round trip to every Dask worker.
* If the Dask Boss itself is SIGKILLed, its workers on the cluster notice
  within about 5 seconds (its lease task disappears from the scheduler),
  kill their processes and unregister themselves.
"""

from __future__ import annotations

from .backend import DaskBackend

__all__ = ["DaskBackend"]
