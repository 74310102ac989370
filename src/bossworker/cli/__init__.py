"""The command line: ``bossworker run`` and ``bossworker demo``.

``bossworker run TARGET`` runs ``TARGET`` (``package.module:function`` or
``path/to/file.py:function``) over jobs in JSON Lines, one JSON value per
line, and writes one JSON line per job::

    {"line":3,"result":{"product":12}}
    {"line":4,"error":"ValueError: rattle","detail":"Traceback ..."}

Guarantees:

* **Every non-blank input line gets exactly one output record** unless the
  run is cut short (Ctrl-C, a closed output): a result, or an error (the
  handler raised, ran out of time or its worker died; the line is not valid
  JSON; the result cannot be written as strict JSON).  ``"line"`` counts
  input lines from 1, blank lines included; blank lines (nothing but white
  space) produce no record.  A last line without a newline is a line.
  A result that is a dict with an ``"ERROR"`` key is an error (the pool's
  convention).  ``"error"`` is the first line of the message; the rest
  (a traceback) is in ``"detail"``.
* **Streaming with flat memory**: at most ``--max-in-flight`` lines are
  between being read and being written (with ``--ordered``, lines held back
  behind an earlier one count too), plus one 64 KiB read buffer; an endless
  pipe or a huge file runs in constant memory.
* **Output order**: completion order by default; input order with
  ``--ordered``.  Output is flushed whenever the runner is about to wait, so
  a slow pipe sees each result as soon as it is ready.
* **Clean streams**: standard input and output are for this process alone;
  the pool's processes get ``/dev/null`` as standard input and standard
  error as standard output, so a handler's ``print()`` cannot corrupt the
  output nor its ``input()`` eat a job; standard output is taken over before
  TARGET is imported, so a module printing as it loads cannot either.
  Records are written as whole lines (one ``write`` of complete lines).
* **Exit codes**: 0 when every job succeeded, 1 when any failed (or the run
  could not finish), 2 for bad options or a TARGET / ``--init`` that cannot
  be imported or called (a one-line message, no traceback), 3 when
  ``--halt`` stopped it, 130 after Ctrl-C.  Ctrl-C force-stops the pool,
  writes the summary and leaves no process behind.  The status is this
  run's: a ``--resume`` that ran nothing failing exits 0.
* **Long runs**: ``--resume`` (the done-set is read back from the output
  file, see :mod:`.resume`), ``--joblog`` (:mod:`.joblog`), ``--halt``
  (:mod:`.halt`), ``--retries`` / ``--retry-on`` / ``--max-worker-memory``
  (the pool's), ``--timeout P%``, ``--eta``, ``--details``.  The records of
  jobs that finished are written however the run ends (killed by SIGKILL
  excepted), so that ``--resume`` runs only what is left.
* **Warnings name input lines**: the pool's warnings (a job timed out, a
  worker died while running one) say ``line 7``, not the pool's job id
  (see :mod:`.logs`; a local Boss started with ``fork``, the default on
  Linux, is the one that logs).
* A one-line summary (jobs, errors, timeouts, elapsed time) goes to
  standard error at the end, on a line of its own even after a handler's
  unterminated output when standard error is a terminal or a regular file
  (see :func:`.console.start_own_line`); and a tqdm progress bar while
  running when standard error is a terminal that is not also standard
  output (``pip install 'bossworker[cli]'``).  On a regular input file the
  bar's total is the file's exact line count.
* ``--dask ADDRESS`` runs the workers on a Dask cluster
  (:class:`bossworker.dask.DaskBackend`); ``--dask local`` on a private
  local one.

Layout (one concern per module; imports go down this list only):

* :mod:`.main` -- ``main()``, ``--version``, ``bossworker demo``;
* :mod:`.options` -- the argument parser and :class:`~.options.RunOptions`;
* :mod:`.targets` -- importing TARGET and ``--init``;
* :mod:`.runner` -- the run: the reader (main thread) and the collector thread;
* :mod:`.progress` -- the progress bar and ``--eta``;
* :mod:`.logs` -- the pool's log records on standard error, job ids turned into lines;
* :mod:`.state` -- what the threads share, and the (ordered) writer;
* :mod:`.joblog` -- ``--joblog``: the job log's lines and file;
* :mod:`.resume` -- ``--resume``: reading the output back, the done-set, repairs;
* :mod:`.stdio` -- taking over standard input / output, writing whole lines,
  reading lines, counting them;
* :mod:`.halt` -- ``--halt``: its spec and when it trips (pure);
* :mod:`.records` -- pure functions: output records (from outcomes), the summary text;
* :mod:`.console` -- standard error, shared by the bar, the warnings and the summary;
* :mod:`.errors` -- the CLI's own exceptions and exit codes.

How: the main thread reads lines, parses them and adds them to the pool
(one ``add_work`` call per batch of lines that arrived together); a
collector thread takes outcomes (``get_outcome()``), maps job ids back to
line numbers and writes the records (and job log lines).  A Ctrl-C lands in the
main thread, wherever it waits.
"""

from __future__ import annotations

from .main import demo, demo_handle_result, demo_work, main

__all__ = ["demo", "demo_handle_result", "demo_work", "main"]
