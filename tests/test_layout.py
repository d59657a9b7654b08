"""The layout: library modules at the bottom, scripts on top that nothing but the tests imports."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

SCRIPTS = {"torch_model_train", "torch_model_predict", "torch_model_export", "torch_model_label", "torch_model_serve",
           "make_captchas", "check_labels"}
BENCHMARKS = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}


def imports(path: Path) -> set[str]:
    """Top-level names of the modules a file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


def test_no_script_or_benchmark_is_imported_outside_tests():
    sources = list(ROOT.glob("*.py")) + list((ROOT / "benchmarks").glob("*.py"))
    assert {p.stem for p in ROOT.glob("*.py")} >= SCRIPTS
    for path in sources:
        allowed = BENCHMARKS if path.parent.name == "benchmarks" else set()  # benchmarks share their helpers
        bad = imports(path) & ((SCRIPTS | BENCHMARKS) - allowed)
        assert not bad, f"{path.name} imports {bad}"


def test_model_py_holds_only_modules_and_their_config():
    assert imports(ROOT / "model.py") <= {"__future__", "dataclasses", "torch"}


def test_every_sample_image_the_readme_names_exists():
    import re
    named = set(re.findall(r"(?:new|train)_images/[\w.-]+\.png", (ROOT / "README.md").read_text()))
    assert named and not [p for p in sorted(named) if not (ROOT / p).is_file()]
