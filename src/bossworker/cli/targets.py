"""Importing TARGET and ``--init``: ``module:attr`` or ``path/to/file.py:attr``."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import UsageError, one_line

__all__ = ["load_callable"]


def load_callable(spec: str, what: str = "TARGET") -> Callable[..., Any]:
    """Import ``module:attr`` or ``path/to/file.py:attr`` and return the callable.

    ``attr`` may be dotted (``Class.method``).  A file is imported under its
    stem as module name, with its directory put first on ``sys.path``, so
    that worker processes started with ``spawn`` or ``forkserver`` (which
    inherit ``sys.path``) import the very same module by name.  Raises
    :class:`UsageError` with a one-line message for anything wrong.
    """
    module_part, sep, attr_path = spec.rpartition(":")
    if not sep or not module_part or not attr_path:
        raise UsageError(f"{what} must look like module:function or path/to/file.py:function, not {spec!r}")
    if module_part.endswith(".py") or os.sep in module_part:
        module = _import_file(module_part, what)
    else:
        module = _import_module(module_part, what)
    obj: Any = module
    for name in attr_path.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise UsageError(f"{what} {spec!r}: {module.__name__!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise UsageError(f"{what} {spec!r} is not callable (it is a {type(obj).__name__})")
    return obj  # type: ignore[no-any-return]


def _import_module(name: str, what: str) -> Any:
    """Import a module by name, the current directory first on the path
    (as ``python -m`` would)."""
    _put_first_on_path(os.getcwd())
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure is the user's to hear about
        raise UsageError(f"cannot import {what} module {name!r}: {one_line(exc)}") from None


def _import_file(path_text: str, what: str) -> Any:
    """Import ``path/to/name.py`` as module ``name`` (see :func:`load_callable`)."""
    path = Path(path_text).resolve()
    if not path.is_file():
        raise UsageError(f"{what} file not found: {path_text}")
    name = path.stem
    already = sys.modules.get(name)
    if already is not None and not _is_module_file(already, path):
        raise UsageError(
            f"cannot import {path_text} as module {name!r}: another module of that name is "
            "already imported; rename the file"
        )
    _put_first_on_path(str(path.parent))
    module = _import_module(name, what)
    if not _is_module_file(module, path):
        raise UsageError(
            f"cannot import {path_text} as module {name!r}: that name is taken by "
            f"{getattr(module, '__file__', None) or 'a built-in module'}; rename the file"
        )
    return module


def _is_module_file(module: Any, path: Path) -> bool:
    file = getattr(module, "__file__", None)
    return file is not None and Path(file).resolve() == path


def _put_first_on_path(directory: str) -> None:
    if directory not in sys.path:
        sys.path.insert(0, directory)
