"""The layers, computed from the source: every import between our packages goes down, never round.

The import graph is read from the AST of every module (imports inside functions count too, and
relative imports are resolved). A module imports only from its own package or a lower layer:

    vaxline  <-  monitoring, storage  <-  ingest, workers, backentry  <-  deploy  <-  commands, loadtests, benchmarks

Packages of one layer do not import each other (ingest, workers and backentry are separate ways in and
out of the stream; commands, loadtests and benchmarks are separate programs). No module imports
`commands`, and there is no import circle between modules. No source file outside the tests is over
600 lines, and no function over 80.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = [
    {"vaxline"},
    {"monitoring", "storage"},
    {"ingest", "workers", "backentry"},
    {"deploy"},
    {"commands", "loadtests", "benchmarks"},
]
LAYER_OF = {package: level for level, packages in enumerate(LAYERS) for package in packages}
MAX_FILE_LINES, MAX_FUNCTION_LINES = 600, 80


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> Iterator[Path]:
    for package in LAYER_OF:
        yield from sorted((ROOT / package).rglob("*.py"))


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import of the file, wherever it stands; `from X import Y` also
    yields X.Y, which is a module when Y is one."""
    module = module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def ours(name: str) -> bool:
    return name.split(".")[0] in LAYER_OF


def graph() -> dict[str, dict[str, int]]:
    """module -> {module it imports: line}, between our modules only."""
    modules = {module_name(path): path for path in sources()}
    edges: dict[str, dict[str, int]] = {name: {} for name in modules}
    for name, path in modules.items():
        for line, target in imports(path):
            while target and target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]  # `from pkg import name`: the module that defines it
            if target in modules and target != name:
                edges[name].setdefault(target, line)
    return edges


def layer_breaks(edges: dict[str, dict[str, int]]) -> list[str]:
    breaks = []
    for source, targets in edges.items():
        mine = source.split(".")[0]
        for target, line in targets.items():
            theirs = target.split(".")[0]
            if theirs == mine:
                continue
            if LAYER_OF[theirs] >= LAYER_OF[mine]:
                where = "the same layer as" if LAYER_OF[theirs] == LAYER_OF[mine] else "a higher layer than"
                breaks.append(f"{source} (line {line}) imports {target}: {theirs} is in {where} {mine}")
    return breaks


def circles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every import circle, found by depth-first search (each reported once, from its smallest module)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in edges[node]:
            if state.get(target) == "open":
                cycle = path[path.index(target):] + [target]
                start = cycle.index(min(cycle[:-1]))
                found.append(cycle[start:-1] + cycle[:start] + [cycle[start]])
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_every_import_goes_down_a_layer():
    edges = graph()
    assert sum(len(targets) for targets in edges.values()) > 100  # the graph was read, not empty
    assert layer_breaks(edges) == []


def test_there_is_no_import_circle():
    assert circles(graph()) == []


def test_nothing_imports_the_command_line():
    importers = [f"{source} (line {line})" for source, targets in graph().items() if not source.startswith("commands")
                 for target, line in targets.items() if target.startswith("commands")]
    tests = [f"{path.name}: {target}" for path in (ROOT / "tests").glob("*.py") for _, target in imports(path)
             if target.startswith("commands") and path.name not in ("test_layout.py",)]
    assert importers == []
    assert tests  # the tests run the command as users do, through commands.main (so this check can see it)


def test_the_checks_see_a_break_and_a_circle():
    """The checks themselves: a core module importing ingest, and two modules importing each other."""
    edges = {"vaxline.doses": {"ingest.app": 3}, "ingest.app": {"ingest.http": 1}, "ingest.http": {"ingest.app": 9}}
    assert layer_breaks(edges) == ["vaxline.doses (line 3) imports ingest.app: ingest is in a higher layer than vaxline"]
    assert circles(edges) == [["ingest.app", "ingest.http", "ingest.app"]]
    assert layer_breaks({"ingest.app": {"workers.loop": 2}}) == [
        "ingest.app (line 2) imports workers.loop: workers is in the same layer as ingest"]


def test_imports_inside_functions_count():
    path = ROOT / "commands" / "records.py"  # its command functions import what they need when they run
    inner = {node.module for function in ast.walk(ast.parse(path.read_text())) if isinstance(function, ast.FunctionDef)
             for node in ast.walk(function) if isinstance(node, ast.ImportFrom) and node.module}
    assert "deploy.stack" in inner
    assert {"deploy.stack", "deploy.stack.reconcile"} <= {target for _, target in imports(path)}
    assert "deploy.stack" in graph()["commands.records"]


@pytest.mark.parametrize("path", list(sources()), ids=lambda p: str(p.relative_to(ROOT)))
def test_files_and_functions_stay_readable(path: Path):
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") <= MAX_FILE_LINES, f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines"
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines, line {node.lineno})"
            for node in ast.walk(ast.parse(text)) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []
