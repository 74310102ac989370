"""Worker log forwarding: what tasks log in the workers, and the Boss's own
warnings, reach this process's logging (here: one line each on stdout),
under every start method."""

from __future__ import annotations

import logging
import os
import sys

from bossworker import Executor

log = logging.getLogger("shop.prices")


def price(item: str) -> int:
    log.info("pricing %s", item)  # made in a worker, handled here
    if item == "crash":
        os._exit(1)  # the Boss says so: "worker ... died ..."
    return len(item) * 10


if __name__ == "__main__":
    handler = logging.StreamHandler(sys.stdout)
    # Forwarded records carry job_id and worker_pid; main's own do not.
    handler.setFormatter(
        logging.Formatter("%(name)s %(levelname)s %(message)s (job %(job_id)s)", defaults={"job_id": None})
    )
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    logging.getLogger("bossworker").setLevel(logging.WARNING)  # its INFO lines: worker starts and exits
    with Executor(max_workers=1, start_method="spawn") as ex:
        print(ex.submit(price, "apple").result())
        print(type(ex.submit(price, "crash").exception()).__name__)
