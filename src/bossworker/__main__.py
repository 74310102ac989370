"""``python -m bossworker``: the command line (see :mod:`bossworker.cli`)."""

from bossworker.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
