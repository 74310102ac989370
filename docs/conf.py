"""Sphinx configuration for bossworker's documentation site.

Built by ``scripts/docs`` (``sphinx -W -n``): every warning is an error,
broken cross-references included (nitpicky), and the local extension
``_ext/api_checks.py`` turns a public name without a docstring, or a name
of ``bossworker.__all__`` missing from the API page, into a warning.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
sys.path.insert(0, str(HERE.parent / "src"))  # the tree's own code, installed or not

import bossworker  # noqa: E402

project = "bossworker"
author = "The bossworker developers"
copyright = "2026, The bossworker developers"
release = bossworker.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "myst_parser",
    "sphinxarg.ext",
    "api_checks",
]

# Markdown pages (MyST), so that docs/design.md and docs/benchmarks.md stay
# plain Markdown that reads the same on a code host and on the site.
source_suffix = {".md": "markdown"}
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
exclude_patterns = ["_build", "_ext"]
# Unlabelled blocks (diagrams, tables in design.md) are shown as they are.
highlight_language = "text"

html_theme = "furo"
html_title = f"bossworker {release}"
html_static_path: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
# No napoleon: the docstrings are reStructuredText (definition lists of
# parameters and fields, :class: roles), not Google or NumPy style, and
# napoleon reads a property's first line "text: more" as a type.

nitpicky = True
# No network when the site is built, so no intersphinx: names of the standard
# library and of the type variables in signatures have no page here, and are
# the only references allowed to dangle.
nitpick_ignore_regex = [
    (r"py:.*", r"(concurrent|asyncio|collections|typing|types|multiprocessing|logging|socket|os|"
     r"enum|datetime|threading|pathlib|selectors|io|distributed|tqdm|_typeshed)(\..*)?"),
    (r"py:.*", r"bossworker\.\w+\.(J|R|T)"),  # the TypeVars of the generic classes
    (r"py:.*", r"_pickle\..*"),  # pickle's exception classes, as the C module names them
    (r"py:.*", r"bossworker\.\w+\._\w+"),  # private helpers in signatures (a TypedDict of options)
    # The Executor's engine (internal) in ExecutorOptions' constructor, which users never call.
    (r"py:.*", r"bossworker\.executor_core\.\w+"),
    (r"py:.*", r"(J|R|T|P|_T|_P|_R|_J|Any|Callable|Iterable|Iterator|AsyncIterator|AsyncIterable|"
     r"Awaitable|Mapping|Sequence|Self|TracebackType|BaseException|Exception|None|NoneType|"
     r"int|float|str|bytes|bool|dict|list|tuple|object|type|TimeoutError|MemoryError|"
     r"RuntimeError|TypeError|ValueError|KeyError|BrokenProcessPool|CancelledError|Future|"
     r"Executor|Literal|P\.args|P\.kwargs|ParamSpec|TypeVar|Generic)"),
]
