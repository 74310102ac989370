"""Every code example on the documentation site and in the README runs.

Each ```python block of the site's pages (docs/**/*.md) and of README.md is
a whole program: it runs as a script, with the tree's src/ on PYTHONPATH,
from the repository's root, and must exit 0.  An ```output block right after
it is its exact standard output.  The examples the pages include from
examples/ (literalinclude; the build fails if one is missing) are run by
tests/test_examples.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
# A python block, and the output block that may follow it (blank lines between).
BLOCK = re.compile(r"^```python\n(?P<code>.*?)^```\n(?:\s*^```output\n(?P<output>.*?)^```\n)?", re.M | re.S)


def examples() -> list[pytest.ParameterSet]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            name = f"{page.relative_to(ROOT)}:{line}"
            found.append(pytest.param(match["code"], match["output"], id=name))
    return found


EXAMPLES = examples()


def test_the_pages_have_examples() -> None:
    """The pattern finds the blocks (a broken pattern would pass every page)."""
    assert len(EXAMPLES) >= 10
    assert any(p.values[1] is not None for p in EXAMPLES)


@pytest.mark.parametrize(("code", "output"), EXAMPLES)
def test_example_runs(code: str, output: str | None, tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 0, done.stderr
    if output is not None:
        assert done.stdout == output
