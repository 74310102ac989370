"""Twins take the same parameters: every public ``aX`` of a facade has the
parameters of its ``X`` (names, kinds and defaults), so a parameter learned
by one twin and not the other (``aadd_work`` without ``retries=``) fails here."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from bossworker import BossWorkerAsync, Executor

FACADES: list[type[Any]] = [BossWorkerAsync, Executor]


def _twins(cls: type[Any]) -> list[tuple[str, str]]:
    names = {name for name in dir(cls) if not name.startswith("_")}
    return sorted((name, name[1:]) for name in names if name.startswith("a") and name[1:] in names)


def _shape(fn: Any) -> list[tuple[str, Any, Any]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


def test_the_pool_has_the_twins_it_documents() -> None:
    pairs = {async_name for async_name, _ in _twins(BossWorkerAsync)}
    expected = {"aadd_work", "aget_result", "aget_outcome", "amap", "amap_outcomes", "aoutcomes", "aresults"}
    assert expected | {"ashut_down"} <= pairs


@pytest.mark.parametrize("cls", FACADES, ids=lambda cls: cls.__name__)
def test_every_async_twin_takes_its_blocking_twins_parameters(cls: type[Any]) -> None:
    for async_name, name in _twins(cls):
        assert _shape(getattr(cls, async_name)) == _shape(getattr(cls, name)), (
            f"{cls.__name__}.{async_name} and .{name} differ"
        )


def test_the_context_manager_twins_match() -> None:
    assert _shape(BossWorkerAsync.__aexit__) == _shape(BossWorkerAsync.__exit__)
