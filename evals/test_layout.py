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


ARCHITECTURE = ROOT.parent / "ARCHITECTURE.md"


def _module_rows() -> list[tuple[str, str, list[str]]]:
    """(module, row text, public names) of ARCHITECTURE.md's module tables, each under its `harness/PKG/` header."""
    import re

    rows, package = [], None
    for line in ARCHITECTURE.read_text().splitlines():
        if m := re.match(r"\*\*\w+\*\* \(`harness/(\w+)/`\)", line):
            package = m.group(1)
        elif package and (m := re.match(r"\| `(\w+)\.py` \| [^|]+ \| (.+) \|$", line)):
            module = f"harness.{package}" + ("" if m.group(1) == "__init__" else f".{m.group(1)}")
            rows.append((module, line, re.findall(r"`([\w*]+)`", m.group(2))))
        elif not line.startswith("|"):
            package = None if line.startswith("#") else package
    return rows


def test_architecture_lists_every_module_and_its_names_resolve():
    """The module map is the tree: every module has a row, and every public name a row lists is importable from
    that module (`parse_*` style patterns match at least one name)."""
    import fnmatch
    import importlib

    rows = _module_rows()
    listed = {m for m, _, _ in rows}
    missing = sorted(m for m in MODULES if _package(m) and _package(m) != "__main__" and m not in listed
                     and not m.endswith(tuple(f".{p}" for p in FLOW)))
    assert not missing, f"ARCHITECTURE.md has no row for {missing}"
    unknown = []
    for module, _, names in rows:
        mod = importlib.import_module(module)
        for name in names:
            found = fnmatch.filter(dir(mod), name) if "*" in name else [name] if hasattr(mod, name) else []
            if not found:
                unknown.append(f"{module}.{name}")
    assert not unknown, f"ARCHITECTURE.md names what its module does not define: {unknown}"


def test_claim_paths_resolve():
    """Every library call the claim-path tables name exists, and every fixture they name is defined in fixtures/."""
    import importlib
    import re

    text = ARCHITECTURE.read_text().split("## A claim's code path", 1)[1].split("\n## ", 1)[0]
    broken = []
    for ref in sorted(set(re.findall(r"`(harness(?:\.\w+)+)`", text))):
        parts = ref.split(".")
        for i in range(len(parts), 1, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ModuleNotFoundError:
                continue
            for attr in parts[i:]:
                obj = getattr(obj, attr, None)
            if obj is None:
                broken.append(ref)
            break
    fixtures_src = "\n".join(p.read_text() for p in (ROOT.parent / "fixtures").glob("*.py"))
    defined = set(re.findall(r"^def (\w+)\(", fixtures_src, re.M))
    named = {f for cell in re.findall(r"^\| ([^|]+) \(`\w+\.py`\) \|", text, re.M) for f in re.findall(r"`(\w+)`", cell)}
    assert named, "no fixture rows found in the claim-path table"
    broken += sorted(f"fixture {f}" for f in named - defined)
    assert not broken, f"ARCHITECTURE.md's claim paths name what does not exist: {broken}"


def _has_submodule(module, name: str) -> bool:
    import importlib.util

    return hasattr(module, "__path__") and importlib.util.find_spec(f"{module.__name__}.{name}") is not None


def test_tests_name_only_what_the_library_defines():
    """Every `from harness... import name` in the tests resolves, and so does every attribute read or patched on a
    module imported as `import harness... as alias`: the CUDA-only tests are skipped here, and a name they keep after
    the library moves it would otherwise fail first on a GPU."""
    import importlib

    broken = []
    for path in sorted((ROOT.parent / "evals").glob("*.py")):
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("harness"):
                module = importlib.import_module(node.module)
                broken += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                           if not hasattr(module, a.name) and not _has_submodule(module, a.name)]
            elif isinstance(node, ast.Import):
                aliases |= {a.asname or a.name: a.name for a in node.names if a.name.startswith("harness.")}
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
                name = node.attr
            elif (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "setattr" and len(node.args) >= 2
                  and isinstance(node.args[0], ast.Name) and node.args[0].id in aliases
                  and isinstance(node.args[1], ast.Constant)):
                name = node.args[1].value
            else:
                continue
            module = aliases[node.value.id if isinstance(node, ast.Attribute) else node.args[0].id]
            if not hasattr(importlib.import_module(module), name):
                broken.append(f"{path.name}: {module}.{name}")
    assert not broken, f"tests name what the library does not define: {sorted(set(broken))}"
