"""The shape of the code, held as tests: the core imports no host and no module in a circle, every declared
dependency is used, classes and functions stay readable, and each rule has one home that the front-ends call."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "resshift_core"
PLUGIN_FOLDERS = (CORE, REPO / "comfy_nodes", REPO / "webui_extension")


def _python_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def _core_imports(path: Path) -> set[str]:
    """The resshift_core modules a core file imports (relative imports resolved; lazy imports included)."""
    package = path.relative_to(REPO).with_suffix("").parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            target = ".".join(base + tuple(filter(None, (node.module or "").split("."))))
            if node.module is None:  # from . import x
                found.update(f"{target}.{alias.name}" for alias in node.names)
            else:
                found.add(target)
    return {name for name in found if name.startswith("resshift_core")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_core_modules_import_each_other_without_a_circle():
    modules = {_module_name(p): p for p in _python_files(CORE)}
    graph = {name: {m for m in _core_imports(path) if m in modules and m != name}
             for name, path in modules.items() if not name.endswith("__main__")}
    graph = {name: targets for name, targets in graph.items() if name != "resshift_core"}  # the package's face
    for targets in graph.values():
        targets.discard("resshift_core")
    visiting, done = set(), set()

    def visit(name, trail):
        if name in visiting:
            raise AssertionError("import circle: " + " -> ".join(trail + [name]))
        if name in done or name not in graph:
            return
        visiting.add(name)
        for target in sorted(graph[name]):
            visit(target, trail + [name])
        visiting.discard(name)
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_every_runtime_dependency_is_imported_by_the_project():
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    import_names = {"pillow": "PIL"}
    source = "\n".join(p.read_text() for folder in (CORE, REPO / "comfy_nodes") for p in _python_files(folder))
    for requirement in declared:
        name = re.split(r"[<>=\[ ;]", requirement)[0].strip().lower()
        module = import_names.get(name, name)
        assert re.search(rf"^\s*(import|from) {module}\b", source, re.M), f"{name} is declared but never imported"


@pytest.mark.parametrize("folder", PLUGIN_FOLDERS, ids=lambda f: f.name)
def test_no_class_over_400_lines_and_no_function_over_100(folder):
    long = []
    for path in _python_files(folder):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                limit = 400 if isinstance(node, ast.ClassDef) else 100
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    long.append(f"{path.relative_to(REPO)}:{node.name} ({length} lines)")
    assert not long, long


def test_front_ends_build_pipelines_through_the_one_assembly():
    """The command line, the app, the benchmark, ComfyUI and the WebUI call ``ResShiftPipeline.assemble`` (or the
    host helper built on it); none loads the two files and pairs them itself."""
    front_ends = [CORE / "cli" / "upscale.py", CORE / "app.py", CORE / "bench.py", REPO / "comfy_nodes" / "host.py",
                  REPO / "webui_extension" / "upscaler.py"]
    for path in front_ends:
        text = path.read_text()
        assert "assemble(" in text, path
        assert 'expect="unet"' not in text and 'expect="autoencoder"' not in text, path  # no pairing by hand
        assert "default_dtype" not in text, path  # the precision rule is the core's (choose_dtype / assemble)
        assert "parse_dtype" not in text or path.name == "bench.py", path  # the benchmark times named dtypes


def test_host_adapters_reach_only_the_core_package_not_its_internals():
    """The WebUI extension, like the node pack, uses the core's public names (one door)."""
    for path in _python_files(REPO / "webui_extension"):
        for line in path.read_text().splitlines():
            match = re.match(r"\s*from resshift_core\.(\w+)", line)
            assert match is None or match.group(1) in ("releases", "errors", "images", "sizing"), (path, line)
