"""The package's import graph, read from the source with ``ast``: no cycle
among module-level imports, and the modules main loads never load the Boss's
or the worker's code (``bossworker.boss``, ``bossworker.worker``)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import bossworker

pytestmark = pytest.mark.timeout(60)

PACKAGE = Path(bossworker.__file__).parent
# What main imports: the package, its asyncio half, the command line, the Dask backend.
MAIN_ROOTS = ("bossworker", "bossworker.aio", "bossworker.cli", "bossworker.dask", "bossworker.dask.backend")
# Main-side modules named by the design (docs/design.md): they must not
# reach the Boss's or the worker's code, directly or through another module.
MAIN_SIDE = (
    "bossworker.pool",
    "bossworker.client",
    "bossworker.executor",
    "bossworker.streams",
    "bossworker.aio",
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


def import_graph() -> dict[str, set[str]]:
    """Each bossworker module -> the bossworker modules it imports when imported."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
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
    assert "bossworker.client" in graph["bossworker.pool"]
    assert "bossworker.protocol" in graph["bossworker.boss.core"]
    assert "bossworker.worker" in graph["bossworker.boss.local"]
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
