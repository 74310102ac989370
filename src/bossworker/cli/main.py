"""``main()``: the ``bossworker`` command (``bossworker run``, ``bossworker
demo``, ``bossworker --version``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from ..pool import BossWorkerAsync
from .console import Console
from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError
from .logs import setup_logging
from .options import RunOptions, build_parser
from .runner import run

__all__ = ["demo", "demo_handle_result", "demo_work", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bossworker`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        return demo()
    console = Console()
    pump = setup_logging(verbose=args.verbose, console=console)
    try:
        options = RunOptions.from_args(args)
        return run(options, console, pump)
    except UsageError as exc:
        console.line(f"bossworker: error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:  # before the run started (a run handles its own)
        return EXIT_INTERRUPTED
    finally:
        pump.close()


def demo_work(job: dict[str, int]) -> dict[str, int]:
    """The synopsis's work handler: multiply ``a`` by ``b``."""
    return {"product": job["a"] * job["b"]}


def demo_handle_result(result: dict[str, Any]) -> dict[str, Any]:
    """The synopsis's result handler: add a sentence."""
    if "product" in result:
        result["string"] = f"the answer is: {result['product']}"
    return result


def demo() -> int:
    """``bossworker demo``: the Perl module's synopsis; prints ``12`` and
    ``the answer is: 12``."""
    with BossWorkerAsync(demo_work, result_handler=demo_handle_result, global_timeout=2) as bw:
        bw.add_work({"a": 3, "b": 4})
        while bw.pending():
            ref = bw.get_result()
            if "ERROR" in ref:
                print(ref["ERROR"], file=sys.stderr)
            else:
                print(ref["product"])
                print(ref["string"])
    return EXIT_OK
