"""The layout: one package whose folders import downwards only, thin scripts on top that nothing
imports, no import circles, no sys.path edits, short files and functions."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import ROOT

PACKAGE = ROOT / "captcha_recognize"
SCRIPTS = {"torch_model_train", "torch_model_predict", "torch_model_export", "torch_model_label", "torch_model_serve",
           "make_captchas", "check_labels"}
# a module may import from its own layer and the layers before it
LAYERS = [{"errors", "text", "checks"}, {"runtime", "files"}, {"device", "model"}, {"data"}, {"reading"},
          {"training"}, {"serve", "labelling", "bench"}, {"cli"}]
MAX_FILE_LINES, MAX_FUNCTION_LINES = 400, 60


def imported(path: Path) -> set[str]:
    """Full names of the modules a file imports, outside ``if TYPE_CHECKING:`` blocks."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # ``from pkg import module``
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    return next(i for i, names in enumerate(LAYERS) if part in names)


def test_scripts_are_thin_and_nothing_imports_a_script_or_a_benchmark():
    benchmarks = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    assert {p.stem for p in ROOT.glob("*.py")} >= SCRIPTS
    for name in SCRIPTS:
        mods = {m for m in imported(ROOT / f"{name}.py") if m != "sys"}
        assert mods and all(m.startswith("captcha_recognize.cli.") for m in mods), f"{name}.py imports {mods}"
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"), *ROOT.glob("*.py")]:
        tops = {m.split(".")[0] for m in imported(path)}
        assert not tops & (SCRIPTS | benchmarks), f"{path.name} imports {tops & (SCRIPTS | benchmarks)}"


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """An import circle of the module graph, as the modules along it, or None. A module importing its
    own package (which Python runs first) closes no circle."""
    done: set[str] = set()

    def visit(m: str, path: list[str]) -> list[str] | None:
        if m in path:
            return path[path.index(m):] + [m]
        if m in done:
            return None
        for d in sorted(graph.get(m, ())):
            if d != m.rsplit(".", 1)[0] and (found := visit(d, path + [m])):
                return found
        done.add(m)
        return None
    return next((c for m in sorted(graph) if (c := visit(m, []))), None)


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """The imports from a folder of the package into a folder above it."""
    return [(m, d) for m, deps in graph.items() for d in sorted(deps) if layer(d) > layer(m)]


def test_the_package_imports_downwards_only_and_without_circles():
    modules = package_modules()
    del modules["captcha_recognize"]  # the front door, which lends the API of any folder; every module imports it first
    graph = {m: {i for i in imported(p) if i in modules and i != m} for m, p in modules.items()}
    assert not upward(graph) and find_circle(graph) is None, (upward(graph), find_circle(graph))


def test_the_layout_checks_find_a_circle_and_an_upward_import():
    a, b, c = "captcha_recognize.data.a", "captcha_recognize.data.b", "captcha_recognize.training.c"
    assert find_circle({a: {b}, b: {a}}) == [a, b, a] and find_circle({a: {b}, b: set()}) is None
    assert find_circle({"captcha_recognize.data": {a}, a: {"captcha_recognize.data"}}) is None  # its own package
    assert upward({a: {c}, c: {a}}) == [(a, c)]


def test_nothing_edits_sys_path():
    for path in [*ROOT.glob("*.py"), *PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py"),
                 *(ROOT / "tests").glob("*.py")]:
        text = path.read_text()
        assert not re.search(r"sys\.path\.(insert|append|extend)|sys\.path\s*[+]?=", text), path


def test_files_and_functions_are_short():
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        assert len(lines) <= MAX_FILE_LINES, f"{path.relative_to(ROOT)} has {len(lines)} lines"
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= MAX_FUNCTION_LINES, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length}"


def test_model_py_holds_only_modules_and_their_config():
    assert {m.split(".")[0] for m in imported(PACKAGE / "model.py")} <= {"__future__", "dataclasses", "torch"}


def test_every_sample_image_the_readme_names_exists():
    named = set(re.findall(r"(?:new|train)_images/[\w.-]+\.png", (ROOT / "README.md").read_text()))
    assert named and not [p for p in sorted(named) if not (ROOT / p).is_file()]
