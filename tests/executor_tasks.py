"""Module-level tasks for tests/test_executor.py, importable by spawned workers."""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

# What the initializer stored in this worker (see init_store).
STATE: dict[str, Any] = {}


class CustomError(Exception):
    """A task's own exception type, with an extra attribute."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, code)
        self.code = code


class UnpicklableError(Exception):
    """Carries a lock: it cannot be pickled."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def square(x: int) -> int:
    return x * x


def add(a: int, b: int, *, c: int = 0) -> int:
    return a + b + c


def return_none() -> None:
    return None


def return_error_dict() -> dict[str, str]:
    return {"ERROR": "this is a value, not a failure"}


def raise_value_error(message: str) -> Any:
    raise ValueError(message)


def raise_custom(message: str, code: int) -> Any:
    raise CustomError(message, code)


def raise_unpicklable(message: str) -> Any:
    raise UnpicklableError(message)


def raise_system_exit(code: int) -> Any:
    raise SystemExit(code)


def raise_timeout_error() -> Any:
    raise TimeoutError("the task's own TimeoutError")


def fail_at(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


def unpicklable_result() -> Any:
    return threading.Lock()


def sleep_then(seconds: float, value: Any) -> Any:
    time.sleep(seconds)
    return value


def pid() -> int:
    return os.getpid()


def block(started: str, release: str, value: Any = None, limit: float = 30.0) -> Any:
    """Say it started (a file), then wait until the test creates ``release``."""
    Path(started).touch()
    deadline = time.monotonic() + limit
    while not os.path.exists(release):
        if time.monotonic() > deadline:
            raise RuntimeError("never released")
        time.sleep(0.005)
    return value


def die(how: str) -> Any:
    """Die mid-task: ``exit`` (os._exit(7)), ``kill`` (SIGKILL) or ``segfault``."""
    if how == "exit":
        os._exit(7)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if how == "segfault":
        import ctypes
        import faulthandler

        # Deliberate: keep the inherited faulthandler's stack out of the log.
        faulthandler.disable()
        ctypes.string_at(0)
    raise ValueError(how)


def long_c_call(iterations: int) -> str:
    """One long C call: SIGALRM cannot interrupt it, only a kill can."""
    import hashlib

    return hashlib.pbkdf2_hmac("sha256", b"pw", b"salt", iterations).hex()


def init_store(queue: Any, lock: Any, value: Any, event: Any) -> None:
    STATE.update(queue=queue, lock=lock, value=value, event=event)


def use_shared(x: int) -> int:
    """Put ``x`` in the initializer's queue, count in its Value, set its Event."""
    with STATE["lock"]:
        STATE["value"].value += 1
    STATE["queue"].put(x)
    STATE["event"].set()
    return x


def init_fail() -> None:
    raise RuntimeError("init exploded")


def write_file(path: str, seconds: float) -> str:
    time.sleep(seconds)
    Path(path).write_text("done")
    return path


def put_into(queue: Any, job: Any) -> Any:
    """A BossWorkerAsync work handler holding a multiprocessing Queue."""
    queue.put(job)
    return job


def init_once(marker: str) -> None:
    """Succeeds in the first worker only: every later one fails."""
    if os.path.exists(marker):
        raise RuntimeError("init fails from now on")
    Path(marker).touch()


# -- issue 16 #2 / 18: data that attacks main's collector thread --------------------


def _explode(kind: str) -> Any:
    """Runs when a :class:`ExplodesInMain` is unpickled (in main)."""
    if kind == "exit":
        raise SystemExit(5)
    if kind == "interrupt":
        raise KeyboardInterrupt
    raise ValueError("unpickling exploded")


class ExplodesInMain:
    """Pickles fine in the worker; unpickling it raises ``kind``'s exception."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> tuple[Any, ...]:
        return (_explode, (self.kind,))


def return_explosive(kind: str) -> ExplodesInMain:
    return ExplodesInMain(kind)


class RefusesPickling:
    """Its pickling raises ``kind``'s exception (in whichever process pickles it)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> tuple[Any, ...]:
        if self.kind == "exit":
            raise SystemExit(6)
        import pickle

        raise pickle.PicklingError("refused to be pickled")


def return_refusing(kind: str) -> RefusesPickling:
    return RefusesPickling(kind)


@dataclasses.dataclass(frozen=True)
class FrozenError(Exception):
    """A frozen-dataclass exception: ``exc.__cause__ = ...`` raises on it."""

    code: int

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenError, (self.code,))


def raise_frozen(code: int) -> Any:
    raise FrozenError(code)


class Blob:
    """A result main can hold a weak reference to."""

    def __init__(self, n: int) -> None:
        self.n = n


def make_blob(n: int) -> Blob:
    return Blob(n)


def sleep_marked(marker: str, seconds: float) -> float:
    """Say it started (a file), then sleep."""
    Path(marker).touch()
    time.sleep(seconds)
    return seconds


def die_once(marker: str, how: str = "exit") -> str:
    """Fail the first attempt (its worker exits, or it overruns a time limit:
    ``how="hang"``), succeed on the next: ``marker`` remembers."""
    if not os.path.exists(marker):
        Path(marker).touch()
        if how == "hang":
            time.sleep(60)
        os._exit(7)
    return "second attempt"


def log_and_return(message: str, value: Any) -> Any:
    """Log at INFO and WARNING under this module's logger, then return."""
    import logging

    log = logging.getLogger("executor_tasks")
    log.info("info: %s", message)
    log.warning("warning: %s", message)
    return value


def log_then_exit(message: str) -> Any:
    """Log a WARNING, then end the worker at once (no flush, no clean-up)."""
    import logging

    logging.getLogger("executor_tasks.dying").warning("last words: %s", message)
    os._exit(3)


def log_job(job: dict[str, Any]) -> int:
    """A BossWorkerAsync work handler: log the job at INFO, return this pid."""
    import logging

    logging.getLogger("executor_tasks.pool").info("job %s", job["n"])
    return os.getpid()


def log_init() -> None:
    import logging

    logging.getLogger("executor_tasks.init").info("init in %d", os.getpid())


def log_exit() -> None:
    import logging

    logging.getLogger("executor_tasks.exit").warning("exit of %d", os.getpid())


def log_from_threads(n: int) -> int:
    """Log 200 records from 4 threads at once; return how many."""
    import logging

    log = logging.getLogger("executor_tasks.threads")

    def run(t: int) -> None:
        for i in range(50):
            log.info("task %d thread %d record %d %s", n, t, i, "x" * 100)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return 200


def _refuse_in_worker() -> Any:
    raise RuntimeError("cannot be rebuilt here")


class BreaksInWorker:
    """Pickles fine in main; unpickling it (in the worker) raises."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_refuse_in_worker, ())
