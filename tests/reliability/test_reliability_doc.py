"""docs/reliability.md stays true to the tests: every test it cites exists, and its table of the
conversion commands' bad inputs lists exactly the cases of tests/conversion/test_bad_inputs.py."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import REPO

DOC = REPO / "docs" / "reliability.md"


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_every_cited_test_exists():
    text = DOC.read_text()
    cited = re.findall(r"`(test_\w+\.py)::(test_\w+)`", text)
    cited += [(f, t) for f, rest in re.findall(r"`(test_\w+\.py)::test_\w+`((?:, `::test_\w+`)+)", text)
              for t in re.findall(r"::(test_\w+)", rest)]
    cited += [("test_checks.py", t) for t in re.findall(r"`(test_\w+)` runs the real console", text)]
    assert len(cited) >= 30
    for file, name in cited:
        found = sorted((REPO / "tests").rglob(file))  # tests mirror the package: file names are unique
        assert len(found) == 1, f"{file}: found {found}"
        path = found[0]
        assert name in _test_functions(path), f"{file}::{name} cited in docs/reliability.md does not exist"


def test_conversion_table_matches_bad_input_cases():
    from tests.conversion.test_bad_inputs import CASES

    documented = set(re.findall(r"^\| `([mpe]_\w+)` \|", DOC.read_text(), flags=re.M))
    assert documented == {c.__name__ for c in CASES}
