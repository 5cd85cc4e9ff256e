"""The test suite's own rules: a helper two test modules need lives in ``tests/helpers_*.py``."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_no_test_module_imports_another():
    # Importing a test module runs its module-level code and collects its fixtures a second time under
    # another name; shared code belongs in a helpers module or conftest.py.
    imports = re.compile(r"^\s*(?:from\s+test_\w+\s+import|import\s+test_\w+)", re.MULTILINE)
    found = {
        path.name: imports.findall(path.read_text())
        for path in sorted(TESTS.glob("*.py"))
        if imports.search(path.read_text())
    }  # fmt: skip
    assert found == {}
