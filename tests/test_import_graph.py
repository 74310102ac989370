"""The package's import graph, read from the source with ``ast``, and its layers.

* no cycle among module-level imports;
* the modules main loads never load the Boss's or the worker's code
  (``bossworker.boss``, ``bossworker.worker``), and the reverse: a Boss or
  a worker never loads main's (checked in a real spawned worker too);
* the sans-IO modules (the codecs, the Boss's core and worker link, and any
  module whose docstring says it does no I/O) import no socket, selector,
  thread, process or signal module, directly or not;
* no module imports another module's private (``_``-prefixed) name.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bossworker
import handlers
from bossworker import BossWorkerAsync, Executor

pytestmark = pytest.mark.timeout(60)

PACKAGE = Path(bossworker.__file__).parent
# What main imports: the package, its asyncio half, the command line, the Dask backend.
MAIN_ROOTS = ("bossworker", "bossworker.aio", "bossworker.cli", "bossworker.dask", "bossworker.dask.backend")
# Main-side modules named by the design (docs/design.md): they must not
# reach the Boss's or the worker's code, directly or through another module.
MAIN_SIDE = (
    "bossworker.pool",
    "bossworker.pool_async",
    "bossworker.pool_map",
    "bossworker.client",
    "bossworker.connection",
    "bossworker.ledger",
    "bossworker.phases",
    "bossworker.tickets",
    "bossworker.session",
    "bossworker.answers",
    "bossworker.executor",
    "bossworker.executor_core",
    "bossworker.executor_map",
    "bossworker.streams",
    "bossworker.aio",
)


# What a Boss or a worker process loads: it must reach none of MAIN_SIDE.
PROCESS_ROOTS = (
    "bossworker.boss.main",
    "bossworker.worker",
    "bossworker.executor_worker",
    "bossworker.dask.boss",
    "bossworker.dask.plugin",
    "bossworker.dask.child",
)
# Modules that do no I/O (the h11 style): frames, values and decisions in and
# out, tested without a process.  Besides these, any module whose docstring's
# first paragraph says "sans-IO" or "no I/O" is held to it (see _declared_sans_io).
SANS_IO = (
    "bossworker.protocol",
    "bossworker.jobs",
    "bossworker.outcome",
    "bossworker.boss.core",
    "bossworker.boss.link",
    "bossworker.ledger",
    "bossworker.phases",
    "bossworker.tickets",
    # Not bossworker.answers: it decodes, but reads /dev/shm segments to do it.
)
# The standard-library modules that mean I/O, threads or processes.
IO_STDLIB = frozenset(
    {"socket", "selectors", "select", "threading", "asyncio", "subprocess", "multiprocessing", "signal"}
)


def _is_process_side(module: str) -> bool:
    return (
        module == "bossworker.worker" or module == "bossworker.boss" or module.startswith("bossworker.boss.")
    )


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The imports a module runs when it is imported: top level, and inside
    top-level ``if``/``try`` blocks, except ``if TYPE_CHECKING:``.  Imports
    inside functions run later, on purpose (a deferred import)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                found.append(node)
            elif isinstance(node, ast.If):
                if "TYPE_CHECKING" not in ast.unparse(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)

    visit(tree.body)
    return found


def _with_parents(module: str, importer: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a``, ``a.b`` and ``a.b.c``, but the
    importer's own packages are being imported already (Python imports a
    package before its modules): those are no edge."""
    parts = module.split(".")
    chain = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return [m for m in chain if not importer.startswith(m + ".")]


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _stdlib_imports(path: Path) -> set[str]:
    """The top-level names of the outside modules ``path`` imports when imported."""
    names: set[str] = set()
    for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - {"__future__", "bossworker"}


def import_graph() -> dict[str, set[str]]:
    """Each bossworker module -> the bossworker modules it imports when imported."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                bases = [alias.name for alias in node.names]
            elif node.level == 0:
                bases = [node.module or ""]
            else:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
                # ``from . import x`` imports the submodule x, if there is one.
                bases = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            for base in bases:
                targets.update(m for m in _with_parents(base, name) if m in modules and m != name)
        graph[name] = targets
    return graph


def reachable(graph: dict[str, set[str]], roots: tuple[str, ...]) -> dict[str, list[str]]:
    """Every module reachable from ``roots``, with one import path to it."""
    paths: dict[str, list[str]] = {root: [root] for root in roots}
    todo = list(roots)
    while todo:
        here = todo.pop()
        for there in sorted(graph[here]):
            if there not in paths:
                paths[there] = [*paths[here], there]
                todo.append(there)
    return paths


def test_the_graph_is_read_from_the_source() -> None:
    graph = import_graph()
    # A few edges we know, so that a broken parser cannot pass the tests below.
    assert "bossworker.session" in graph["bossworker.pool"]
    assert "bossworker.protocol" in graph["bossworker.boss.core"]
    assert "bossworker.worker" in graph["bossworker.boss.starts"]
    assert "bossworker.boss" in graph["bossworker.dask.plugin"]  # a module's package runs first
    assert "bossworker" not in graph["bossworker.boss.core"]  # ... and is running already
    assert "bossworker.pool" in graph["bossworker.cli.main"]


def test_no_import_cycle() -> None:
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_main_side_never_loads_the_boss_or_worker_code() -> None:
    graph = import_graph()
    paths = reachable(graph, MAIN_ROOTS + MAIN_SIDE)
    assert set(MAIN_SIDE) <= set(paths)
    leaks = {m: " -> ".join(path) for m, path in paths.items() if _is_process_side(m)}
    assert not leaks, f"main-side imports reach process-side code: {leaks}"


def test_the_boss_core_and_link_import_no_io_modules() -> None:
    graph = import_graph()
    for sans_io in ("bossworker.boss.core", "bossworker.boss.link"):
        paths = reachable(graph, (sans_io,))
        for io_module in (
            "bossworker.boss.local",
            "bossworker.boss.main",
            "bossworker.worker",
            "bossworker.process",
        ):
            assert io_module not in paths, " -> ".join(paths[io_module])


EXECUTOR = ("bossworker.executor", "bossworker.executor_core", "bossworker.executor_map")


def test_main_side_layers() -> None:
    """Facades stand on the session, the session on the drivers, the
    drivers on the ledger; never the other way, and neither facade on the
    other's insides (the Executor's pool is a view made through a public
    constructor)."""
    graph = import_graph()
    below = {
        "bossworker.ledger": {"bossworker.client", "bossworker.aio", "bossworker.session", "bossworker.pool"},
        "bossworker.phases": {"bossworker.ledger", "bossworker.client", "bossworker.aio", "bossworker.pool"},
        "bossworker.tickets": {"bossworker.ledger", "bossworker.client", "bossworker.aio", "bossworker.pool"},
        "bossworker.answers": {"bossworker.client", "bossworker.session", "bossworker.pool"},
        "bossworker.connection": {
            "bossworker.client",
            "bossworker.aio",
            "bossworker.session",
            "bossworker.pool",
        },
        "bossworker.client": {"bossworker.session", "bossworker.pool", *EXECUTOR},
        "bossworker.session": {"bossworker.pool", "bossworker.streams", *EXECUTOR},
        "bossworker.pool": set(EXECUTOR),
        "bossworker.pool_map": {"bossworker.pool", *EXECUTOR},
        # The Executor's engine stands under its front and its map, never on them.
        "bossworker.executor_core": {"bossworker.executor", "bossworker.executor_map"},
        "bossworker.executor_map": {"bossworker.executor"},
    }
    for module, forbidden in below.items():
        paths = reachable(graph, (module,))
        for up in forbidden:
            assert up not in paths, f"{module} reaches {up}: {' -> '.join(paths[up])}"


def test_importing_and_using_the_package_in_main_leaves_boss_and_worker_unloaded() -> None:
    """The same, by a real import: a fresh interpreter imports what main
    uses and must not have loaded the process-side modules."""
    script = textwrap.dedent(
        """
        import sys
        import bossworker, bossworker.aio, bossworker.cli, bossworker.config, bossworker.dask
        from bossworker import Executor, BossWorkerAsync, Stats
        loaded = sorted(m for m in sys.modules if m == "bossworker.worker" or m.startswith("bossworker.boss"))
        print(",".join(loaded))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=50, check=True
    )
    assert out.stdout.strip() == ""


def test_boss_and_worker_code_never_loads_main_side_code() -> None:
    graph = import_graph()
    paths = reachable(graph, PROCESS_ROOTS)
    leaks = {m: " -> ".join(paths[m]) for m in MAIN_SIDE if m in paths}
    assert not leaks, f"process-side imports reach main-side code: {leaks}"


def _declared_sans_io() -> set[str]:
    """The modules whose docstring opens by saying they do no I/O."""
    declared = set()
    for name, path in _modules().items():
        doc = ast.get_docstring(ast.parse(path.read_text(), str(path))) or ""
        if re.search(r"sans-io|no i/o", doc.split("\n\n")[0], re.IGNORECASE):
            declared.add(name)
    return declared


def test_sans_io_modules_import_no_io() -> None:
    graph = import_graph()
    modules = _modules()
    declared = _declared_sans_io()
    assert {"bossworker.protocol", "bossworker.boss.core", "bossworker.boss.link"} <= declared
    for sans_io in sorted(set(SANS_IO) | declared):
        paths = reachable(graph, (sans_io,))
        for module, path in paths.items():
            io = _stdlib_imports(modules[module]) & IO_STDLIB
            assert not io, f"{sans_io} does I/O through {' -> '.join(path)}, which imports {sorted(io)}"


def test_no_module_imports_a_private_name_of_another() -> None:
    """A leading underscore says "this module's own": importing one from
    elsewhere (even inside a function) couples two modules behind the
    public surface.  Make the name public (and say so) or move the code."""
    found = []
    for name, path in sorted(_modules().items()):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").startswith("bossworker")
            ):
                found += [
                    f"{name}: from {'.' * node.level}{node.module or ''} import {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert not found, "private names imported across modules:\n" + "\n".join(found)


def test_the_package_loads_its_facades_on_first_use() -> None:
    script = textwrap.dedent(
        """
        import sys
        import bossworker
        before = sorted(m for m in sys.modules if m.startswith("bossworker"))
        bossworker.Executor
        print(",".join(before), "bossworker.executor" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=50, check=True
    )
    assert out.stdout.split() == ["bossworker,bossworker.errors", "True"]
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        bossworker.Nope  # noqa: B018 - the attribute access is the test


MAIN_SIDE_NAMES = ("pool", "client", "executor", "executor_core", "executor_map", "streams", "aio")


def _main_side_loaded(modules: list[str]) -> list[str]:
    return [m for m in modules if m.rpartition(".")[2] in MAIN_SIDE_NAMES and m.startswith("bossworker.")]


@pytest.mark.timeout(120)
def test_a_spawned_worker_loads_no_main_side_module() -> None:
    """A real spawned Boss and worker (the pool's and the Executor's): the
    worker's ``sys.modules`` holds none of main's modules."""
    with BossWorkerAsync(handlers.loaded_modules, worker_count=1, start_method="spawn") as bw:
        bw.add_work("bossworker")
        loaded = bw.get_result(timeout=60)
    assert isinstance(loaded, list) and "bossworker.worker" in loaded  # the probe looked at the right process
    assert _main_side_loaded(loaded) == []
    with Executor(max_workers=1, start_method="spawn") as ex:
        loaded = ex.submit(handlers.loaded_modules, "bossworker").result(timeout=60)
        assert ex.submit(os.getpid).result(timeout=60) != os.getpid()
    assert "bossworker.executor_worker" in loaded
    assert _main_side_loaded(loaded) == []
