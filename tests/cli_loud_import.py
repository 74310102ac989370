"""A TARGET module that prints while it is imported (tests/test_cli.py):
that text must not land among the JSON Lines records."""

from __future__ import annotations

from typing import Any

print("a TARGET module printing as it is imported")


def echo(job: Any) -> Any:
    return job
