"""Build checks for the API reference (a Sphinx extension of this site).

* A public name (no leading underscore) that autodoc documents without a
  docstring is a warning, so ``sphinx -W`` fails on it.
* Every name in ``bossworker.__all__``, and ``bossworker.dask.DaskBackend``,
  must be documented somewhere on the site: a name left off the API page is
  a warning too.  (The page's "Other names" section documents, by
  ``automodule``, any name of ``__all__`` it does not place by hand, so a new
  public name appears with its docstring, or fails the build without one.)
"""

from __future__ import annotations

from typing import Any

from sphinx.application import Sphinx
from sphinx.util import logging

logger = logging.getLogger(__name__)

#: Documented names that must exist besides ``bossworker.__all__``.
EXTRA_REQUIRED = ("bossworker.dask.DaskBackend",)


def check_docstring(app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    """Warn when a public object autodoc renders has no docstring of its own.

    A module's own docstring is not shown: the API page uses ``automodule``
    only to catch the names of ``__all__`` it does not document by hand.
    """
    if what == "module":
        lines.clear()
        return
    if name.rsplit(".", 1)[-1].startswith("_"):
        return
    if not any(line.strip() for line in lines):
        if what == "attribute" and _field_in_class_docstring(name):
            return  # a dataclass field, documented in its class's list of fields
        logger.warning("public name %s has no docstring", name, type="api", subtype="docstring")


def _field_in_class_docstring(name: str) -> bool:
    """Whether ``module.Class.field`` is a dataclass field named in the class docstring."""
    import dataclasses
    import importlib

    owner, _, field = name.rpartition(".")
    module_name, _, class_name = owner.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        return False
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    return field in fields and f"\n    {field}\n" in (cls.__doc__ or "")


def check_all_documented(app: Sphinx, env: Any) -> None:
    """Warn for each required public name the site does not document."""
    import bossworker

    documented = set(env.get_domain("py").objects)
    required = [f"bossworker.{name}" for name in bossworker.__all__] + list(EXTRA_REQUIRED)
    for name in required:
        if name not in documented:
            logger.warning("%s is public but not on the API page", name, type="api", subtype="missing")


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("autodoc-process-docstring", check_docstring)
    app.connect("env-check-consistency", check_all_documented)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
