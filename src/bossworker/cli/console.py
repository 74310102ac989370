"""Standard error, shared by the progress bar, the pool's warnings and the
summary, so that their lines do not cut into each other.

A handler's own output also goes to standard error (see
:func:`.stdio.claim_stdout`), straight from the worker processes: this
process never sees it, so it cannot know whether such output ended with a
newline.  :func:`start_own_line` puts the summary on a line of its own
anyway where that can be done exactly, without a stray blank line.
"""

from __future__ import annotations

import os
import stat
import sys
import threading
from typing import Any

__all__ = ["Console", "start_own_line"]


class Console:
    """Writes whole lines to standard error; while a progress bar is shown,
    the bar is cleared before and redrawn after each line (as tqdm.write
    does).  Thread-safe."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.bar: Any = None  # a tqdm bar while one is shown

    def line(self, text: str) -> None:
        with self.lock:
            bar = self.bar
            if bar is not None:
                bar.clear()
            try:
                sys.stderr.write(text + "\n")
                sys.stderr.flush()
            except (OSError, ValueError):
                pass  # nowhere left to say it
            if bar is not None:
                bar.refresh()


def start_own_line(fd: int = 2) -> str:
    """What to write before a line so that it starts a line of its own on
    ``fd``, whatever a handler last wrote there (``""`` if nothing is needed
    or nothing can be known).

    * A **terminal**: the prompt trick of zsh (``PROMPT_SP``): as many spaces
      as the terminal is wide, then a carriage return.  From the start of a
      line the spaces end in the last column without wrapping (auto-margin
      terminals defer the wrap), and the return goes back to the start of the
      same, blank line; after unterminated output they wrap onto the next
      line, and the return goes to its start.  No blank line either way.
    * A **regular file**: a newline if its last byte (read through
      ``/proc/self/fd``, Linux) is not one.
    * Anything else (a pipe, a socket): written bytes cannot be read back,
      so nothing is added.
    """
    try:
        if os.isatty(fd):
            columns = os.get_terminal_size(fd).columns
            return " " * columns + "\r" if columns > 0 else "\n"
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return ""
        end = os.lseek(fd, 0, os.SEEK_CUR)
        if end <= 0:
            return ""
        with open(f"/proc/self/fd/{fd}", "rb") as again:
            return "" if os.pread(again.fileno(), 1, end - 1) in (b"\n", b"") else "\n"
    except (OSError, ValueError):
        return ""
