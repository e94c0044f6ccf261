"""The layout shows the architecture: `service/` in packages by capability whose imports
only run downward, no import cycle, and no file a reader needs a table of contents for.

    service.__main__                         the command line
    service.app                              the ASGI app: wires everything
    service.live, service.moving             live counters; export, import, migrate
    service.api                              the commands
    service.http                             the HTTP edge
    service.config                           the config
    service.storage                          Redis: keys, scripts, store, transports, formats
    service.ops                              metrics, logs, lifecycle, build info
    service.errors, service.wire             the vocabulary

A module may import a module of a lower layer, or of its own package; live and moving
are one layer and do not import each other. Every import counts, also those inside a
function or under TYPE_CHECKING: they are dependencies all the same.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[1]
SERVICE: Final = ROOT / "service"
MAX_LINES: Final = 600
# The bench driver and the load-test kit are read like the service: the same bound.
LONG_FILE_ROOTS: Final = (SERVICE, ROOT / "tests" / "bench", ROOT / "deploy" / "loadtest")
LAYERS: Final = (
    ("service.__main__",),
    ("service.app",),
    ("service.live", "service.moving"),
    ("service.api",),
    ("service.http",),
    ("service.config",),
    ("service.storage",),
    ("service.ops",),
    ("service.errors", "service.wire"),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(SERVICE.rglob("*.py"))}


def imports_of(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            # `from service.storage import scripts` imports the module service.storage.scripts
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def service_imports(path: Path, known: dict[str, Path]) -> set[str]:
    return {name for name in imports_of(path) if name in known and name != "service"}


def layer_of(module: str) -> tuple[int, str]:
    """The layer's index and the unit (package or top-level module) a module belongs to."""
    for index, units in enumerate(LAYERS):
        for unit in units:
            if module == unit or module.startswith(unit + "."):
                return index, unit
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py: give it a package")


def test_every_module_is_in_a_layer() -> None:
    for module in modules():
        if module != "service":
            layer_of(module)


def test_imports_only_run_downward() -> None:
    known = modules()
    upward = []
    for module, path in known.items():
        if module == "service":
            continue
        layer, unit = layer_of(module)
        for imported in service_imports(path, known):
            other_layer, other_unit = layer_of(imported)
            if other_unit != unit and other_layer <= layer:
                upward.append(f"{module} imports {imported}")
    assert upward == [], "imports that do not run downward:\n" + "\n".join(sorted(upward))


def test_no_import_cycle() -> None:
    known = modules()
    graph = {module: service_imports(path, known) - {module} for module, path in known.items()}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        if module in visiting:
            cycle = [*visiting[visiting.index(module) :], module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        visiting.append(module)
        for imported in sorted(graph[module]):
            # A package imports its own modules in its __init__ (re-exports): not a cycle
            # of dependencies, only of files.
            if not (module != imported and imported.startswith(module + ".")):
                visit(imported)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_every_package_says_what_it_owns_and_what_it_may_import() -> None:
    for init in sorted(SERVICE.glob("*/__init__.py")):
        docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert docstring, f"{init.relative_to(ROOT)} has no docstring"
        assert "may import" in docstring, f"{init.relative_to(ROOT)} does not say what it may import"


def test_the_architecture_note_matches_the_tree() -> None:
    """docs/architecture.md names every package and module of service/, and nothing else."""
    note = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    for package in sorted(path.parent for path in SERVICE.glob("*/__init__.py")):
        assert f"service/{package.name}/" in note, (
            f"docs/architecture.md does not show service/{package.name}/"
        )
    for path in sorted(SERVICE.rglob("*.py")):
        if path.name != "__init__.py":
            assert path.name in note, f"docs/architecture.md does not name {path.relative_to(ROOT)}"
    named = set(re.findall(r"\b([a-z_]+\.py)\b", note))
    existing = {path.name for path in SERVICE.rglob("*.py")}
    assert named <= existing, f"docs/architecture.md names files that are gone: {named - existing}"


@pytest.mark.parametrize("root", LONG_FILE_ROOTS, ids=lambda root: str(root.relative_to(ROOT)))
def test_no_file_is_longer_than_a_reader_holds(root: Path) -> None:
    long = {
        str(path.relative_to(ROOT)): lines
        for path in sorted(root.rglob("*.py"))
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}, f"files over {MAX_LINES} lines: split them by job"
