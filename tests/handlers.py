"""Module-level handlers, importable by spawned Boss and worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any


def multiply(job: dict[str, Any]) -> dict[str, Any]:
    return {"product": job["a"] * job["b"]}


def add_string(result: dict[str, Any]) -> dict[str, Any]:
    if "product" in result:
        result["string"] = f"the answer is: {result['product']}"
    return result


def echo(job: Any) -> Any:
    return job


def return_none(job: Any) -> None:
    return None


def raise_value_error(job: Any) -> Any:
    raise ValueError("rattle")


def sleep_for(job: dict[str, Any]) -> dict[str, Any]:
    time.sleep(job["seconds"])
    return {"slept": job["seconds"], "pid": os.getpid()}


def pid_of_worker(job: Any) -> int:
    return os.getpid()


def run_subprocess(job: Any) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True, check=True)
    return {"out": out.stdout.strip()}


def fork_and_wait(job: Any) -> dict[str, Any]:
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    return {"child_status": os.waitstatus_to_exitcode(status)}


def fork_and_return(job: Any) -> dict[str, Any]:
    """A careless handler: its child returns into the worker's loop."""
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
    return {"parent": pid != 0}


def unpicklable_result(job: Any) -> Any:
    return lambda: None


def chatty(job: Any) -> dict[str, Any]:
    print("noise on stdout " * 100)
    print("noise on stderr " * 100, file=sys.stderr)
    sys.stdout.flush()
    os.write(1, b"\x00raw bytes on fd 1\x00" * 100)
    return {"ok": job}


def failing_init() -> None:
    raise RuntimeError("init exploded")


def write_marker_init() -> None:
    path = os.environ.get("BW_MARKER_DIR")
    if path:
        with open(os.path.join(path, f"init-{os.getpid()}"), "w") as f:
            f.write("x")


def write_marker_exit() -> None:
    path = os.environ.get("BW_MARKER_DIR")
    if path:
        with open(os.path.join(path, f"exit-{os.getpid()}"), "w") as f:
            f.write("x")


def exit_hard(job: Any) -> Any:
    os._exit(job.get("code", 9))


def kill_self(job: Any) -> Any:
    os.kill(os.getpid(), signal.SIGKILL)


def segfault(job: Any) -> Any:
    import ctypes
    import faulthandler

    # pytest enables faulthandler in main and a forked worker inherits it:
    # this crash is deliberate, so keep its "Fatal Python error" stack out
    # of the test log.
    faulthandler.disable()
    ctypes.string_at(0)


def spin_with_alarm_blocked(job: dict[str, Any]) -> Any:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        end = time.monotonic() + job["seconds"]
        while time.monotonic() < end:
            pass
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
    return {"done": True}


def long_c_call(job: dict[str, Any]) -> Any:
    import hashlib

    return hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", job["iterations"]).hex()


def raise_base(job: dict[str, Any]) -> Any:
    kind = job["kind"]
    if kind == "SystemExit":
        raise SystemExit(3)
    if kind == "KeyboardInterrupt":
        raise KeyboardInterrupt
    raise GeneratorExit


def swallow_everything(job: dict[str, Any]) -> Any:
    try:  # noqa: SIM105 - a careless handler, on purpose
        time.sleep(job["seconds"])
    except BaseException:  # noqa: BLE001 - a careless handler, on purpose
        pass
    return {"swallowed": True}


# -- added for the fault-injection tests (tests/test_faults.py) -------------------


def crash_on_demand(job: Any) -> Any:
    """Echo ``job`` with this worker's pid, unless ``job`` asks to die.

    ``{"crash": "exit"}`` leaves through ``os._exit(job["code"])``;
    ``"kill"`` SIGKILLs itself; ``"segfault"`` reads address 0;
    ``"wait"`` writes its pid to ``job["pid_file"]`` and sleeps (for the
    test to kill it from outside).  Anything else sleeps ``job["seconds"]``.
    """
    how = job.get("crash") if isinstance(job, dict) else None
    if how == "exit":
        exit_hard(job)
    elif how == "kill":
        kill_self(job)
    elif how == "segfault":
        segfault(job)
    elif how == "wait":
        write_pid_then_sleep(job)
    elif isinstance(job, dict) and job.get("seconds"):
        time.sleep(job["seconds"])
    return {"job": job, "pid": os.getpid()}


def write_pid_then_sleep(job: dict[str, Any]) -> dict[str, Any]:
    """Tell the test which worker runs this job (by file), then sleep."""
    path = job["pid_file"]
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)  # the test never sees a half-written file
    time.sleep(job.get("seconds", 60))
    return {"slept": job.get("seconds", 60), "pid": os.getpid()}


def init_fails_if_marker() -> None:
    """An init_handler that fails while the file $BW_INIT_FAIL_FILE exists."""
    path = os.environ.get("BW_INIT_FAIL_FILE")
    if path and os.path.exists(path):
        raise RuntimeError("init refused: the marker file exists")


def init_marker_then_hold() -> None:
    """An init_handler that leaves its marker, then waits while the file
    $BW_INIT_HOLD_FILE exists (at most a minute): a worker the test can
    catch in the middle of its start-up."""
    write_marker_init()
    path = os.environ.get("BW_INIT_HOLD_FILE")
    deadline = time.monotonic() + 60
    while path and os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def start_stray_thread(job: Any) -> int:
    """A careless handler: leaves a non-daemon thread running for a minute."""
    import threading

    threading.Thread(target=time.sleep, args=(60,), daemon=False).start()
    return os.getpid()


def make_bytes(n: int) -> bytes:
    """A result of ``n`` bytes (a small job, a big answer)."""
    return b"\xab" * n


def length_of(job: bytes) -> int:
    """A small answer to a big job."""
    return len(job)


def echo_with_pid(job: Any) -> tuple[Any, int]:
    return job, os.getpid()


def size_probe(job: tuple[str, Any]) -> Any:
    """``("make", n)``: answer ``n`` bytes; ``("len", data)``: answer
    ``len(data)``; ``("sleep", s)``: sleep ``s`` seconds; ``("echo", x)``:
    answer ``x``."""
    op, arg = job
    if op == "sleep":
        time.sleep(arg)
        return os.getpid()
    if op == "make":
        return make_bytes(arg)
    if op == "len":
        return length_of(arg)
    return arg


def hang_forever() -> None:
    """An exit (or init) handler that never returns."""
    time.sleep(3600)


def write_to_own_socket(job: dict[str, Any]) -> str:
    """A misbehaving handler: writes ``job["data"]`` to its worker's socket to
    the Boss (the only socket the worker holds), then returns normally."""
    fds = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                fds.append(int(fd))
        except OSError:
            pass  # the descriptor listdir itself used, closed since
    assert len(fds) == 1, f"expected one socket in the worker, found {fds}"
    os.write(fds[0], job["data"])
    return "wrote"


# -- added for the process-watching tests (tests/test_watching.py) -----------------

# Popen objects of children left running on purpose: kept, so that no
# "subprocess still running" ResourceWarning fires when they are collected.
_LEFT_RUNNING: list[Any] = []


def _write_atomically(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)  # the test never sees a half-written file


def with_helper(job: dict[str, Any]) -> dict[str, Any]:
    """Fork a helper without exec, as some handlers do for background work.

    The helper holds a copy of every descriptor the worker has (its socket,
    its sentinel pipe), writes its pid to ``job["helper_file"]`` and sleeps
    ``job["helper_seconds"]`` (60).  With ``detach`` (the default) it leaves
    the worker's process group (``setsid``), so only watching the worker
    itself can tell the worker is gone.  Without ``helper_file``, no helper.  Then the handler does ``then``:
    ``"return"`` (default); ``"wait"``: write its pid to ``job["pid_file"]``
    and sleep a minute; ``"stuck"``: sleep ``job["seconds"]`` with SIGALRM
    blocked (only the Boss's kill ends it).
    """
    helper = os.fork() if "helper_file" in job else -1
    if helper == 0:
        try:
            if job.get("detach", True):
                os.setsid()
            _write_atomically(job["helper_file"], str(os.getpid()))
            time.sleep(job.get("helper_seconds", 60))
        finally:
            os._exit(0)
    then = job.get("then", "return")
    if then == "wait":
        write_pid_then_sleep({"pid_file": job["pid_file"], "seconds": 60})
    elif then == "stuck":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(job["seconds"])
    return {"helper": helper, "pid": os.getpid()}


def start_children(job: dict[str, Any]) -> dict[str, Any]:
    """Start a ``sleep`` child the way handlers do, marked by ``job["token"]``
    (its argument, a unique number of seconds, e.g. ``"32.123456"``).

    ``how``: ``"system"`` runs ``os.system("sleep TOKEN")``; ``"popen"``
    runs ``Popen(["sleep", TOKEN]).wait()``; ``"background"`` starts it and
    returns at once.  With ``pid_file``, the worker's pid is written there
    once the child runs.
    """
    token = job["token"]
    how = job["how"]
    if how == "system":
        if job.get("pid_file"):
            _write_atomically(job["pid_file"], str(os.getpid()))
        os.system(f"sleep {token}")
    else:
        child = subprocess.Popen(["sleep", token])
        if job.get("pid_file"):
            _write_atomically(job["pid_file"], str(os.getpid()))
        if how == "popen":
            child.wait()
        else:
            _LEFT_RUNNING.append(child)
    return {"pid": os.getpid()}


def big_result_when_released(job: dict[str, Any]) -> bytes:
    """Write the worker's pid to ``job["pid_file"]``, wait (at most a
    minute) until ``job["release_file"]`` exists, then answer ``job["size"]``
    bytes (big enough for a shared-memory segment)."""
    _write_atomically(job["pid_file"], str(os.getpid()))
    deadline = time.monotonic() + 60
    while not os.path.exists(job["release_file"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return b"\xcd" * job["size"]


WORKER_LOGGER = "bossworker-tests.worker"


def log_through_queue(queue: Any) -> None:
    """An init_handler (bound with functools.partial): the standard
    QueueHandler recipe, sending this worker's log records to ``queue``."""
    import logging
    import logging.handlers

    logger = logging.getLogger(WORKER_LOGGER)
    logger.addHandler(logging.handlers.QueueHandler(queue))
    logger.setLevel(logging.INFO)
    logger.propagate = False


def log_job(job: Any) -> Any:
    """Log one record naming the job, and echo it."""
    import logging

    logging.getLogger(WORKER_LOGGER).info("job %r", job)
    return job


_STASHED: list[Any] = []


def stash_queue(queue: Any) -> None:
    """An init_handler (bound with functools.partial): keep ``queue`` for
    :func:`put_bytes`."""
    _STASHED.append(queue)


def put_bytes(n: int) -> int:
    """Put ``n`` bytes into the stashed queue (its feeder thread writes them
    to the queue's pipe in the background) and answer at once."""
    _STASHED[0].put(b"\x00" * n)
    return n


def buffer_logs_in_file(path: str) -> None:
    """An init_handler (bound with functools.partial): this worker's log
    records wait in a MemoryHandler (flushed only when it is full, or
    flushed at exit) in front of a file of its own under ``path``."""
    import logging
    import logging.handlers

    target = logging.FileHandler(os.path.join(path, f"log-{os.getpid()}"))
    logger = logging.getLogger(WORKER_LOGGER)
    logger.addHandler(logging.handlers.MemoryHandler(10_000, logging.CRITICAL, target))
    logger.setLevel(logging.INFO)
    logger.propagate = False


def echo_forking_helpers(job: int) -> int:
    """Echo ``job``; for every hundredth, first fork (without exec) a helper
    that holds the worker's descriptors for half a second (a double fork:
    the worker leaves no zombie, the helper stays in the worker's group)."""
    if job % 100 == 0:
        child = os.fork()
        if child == 0:
            try:
                if os.fork() == 0:
                    time.sleep(0.5)
            finally:
                os._exit(0)
        os.waitpid(child, 0)
    return job


def loaded_modules(prefix: str) -> list[str]:
    """The modules this process has loaded whose names start with ``prefix``."""
    return sorted(m for m in sys.modules if m.startswith(prefix))
