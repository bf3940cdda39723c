"""The library's layout follows the data flow: a module imports only from its own package and packages before it.

The order is ARCHITECTURE.md's. Every import counts, those inside functions too: a lazy import against the flow
is still a dependency against it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import harness

ROOT = Path(harness.__file__).resolve().parent
MAX_LINES = 450

# Package -> its place in the flow. A package may import packages of a lower rank (and itself); packages of the
# same rank are independent of each other.
FLOW = {
    "config": 0, "run": 0,
    "data": 1,
    "models": 2,
    "steering": 3,
    "generation": 4,
    "judges": 5, "measures": 5,
    "stats": 6,
    "report": 7,
    "tools": 8,
    "__main__": 9,
}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(ROOT.rglob("*.py"))}


def _imports(path: Path, module: str) -> list[tuple[str, int]]:
    """(imported harness module, line) for every import in `path`, relative ones resolved."""
    found = []
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "harness"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")[: len(module.split(".")) - node.level + is_package]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "harness":
                continue
            names = [f"{base}.{a.name}" for a in node.names]
            found += [(n if n in MODULES else base, node.lineno) for n in names]
    return found


MODULES = _modules()


def _package(module: str) -> str | None:
    """The stage package of `harness.PKG...` (None for the root package, which only holds REPO_ROOT and the
    version)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_package_has_a_place_in_the_flow():
    packages = {_package(m) for m in MODULES} - {None}
    assert packages <= set(FLOW), f"packages without a place in FLOW (add them here and to ARCHITECTURE.md): " \
                                  f"{sorted(packages - set(FLOW))}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _package(m)))
def test_imports_follow_the_flow(module):
    own = _package(module)
    against = []
    for target, line in _imports(MODULES[module], module):
        pkg = _package(target)
        if pkg is None or pkg == own:
            continue
        if FLOW[pkg] >= FLOW[own]:
            against.append(f"line {line}: {target} ({pkg}, rank {FLOW[pkg]})")
    assert not against, f"{module} ({own}, rank {FLOW[own]}) imports against the flow: {against}"


def test_no_import_circle():
    graph = {m: {t for t, _ in _imports(p, m) if t in MODULES and t != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            pytest.fail(f"import circle: {' -> '.join(cycle)}")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines (> {MAX_LINES}): split it by what its parts do"


@pytest.mark.parametrize("package", sorted(FLOW.keys() - {"__main__"}))
def test_package_says_what_it_owns(package):
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    assert doc, f"harness/{package}/__init__.py has no docstring saying what it owns and what it may import"
    assert "import" in doc.lower(), f"harness.{package}'s docstring does not say what it may import"
