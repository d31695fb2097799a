"""The house has floors: imports point down only, no file circle, no in-tree import hidden in a function,
and every library module imports on its own in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("posttrain", "specialists", "distill", "rewards", "rollout")
FLOORS = {"base": 0, "ground": 1, "core": 2, "loops": 3, "app": 4}
# what distillation may use of the specialists package: the task definitions, never the RL loop
DISTILL_MAY_USE = ("specialists.domains", "specialists.math_task", "specialists.code_task",
                   "specialists.instruct_task", "specialists.agent_task", "specialists.data", "specialists.bfcl")


def floor(module: str) -> int:
    if module in ("posttrain", "posttrain.plugins"):
        return FLOORS["base"]
    if module.split(".")[0] in ("rollout", "rewards"):
        return FLOORS["ground"]
    if module.startswith("posttrain.core"):
        return FLOORS["core"]
    if module.split(".")[0] in ("specialists", "distill"):
        return FLOORS["loops"]
    return FLOORS["app"]


def library_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imports_of(module: str, path: Path, known: set[str]) -> list[tuple[str, bool]]:
    """``(imported in-tree module, inside a function?)`` for every import statement of the file."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", "") == "TYPE_CHECKING":
                continue  # annotations only: never imported at run time
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in child.names]
            found.extend((name, in_function) for name in names if name in known)
            visit(child, nested)

    visit(tree, False)
    return found


GRAPH = {module: imports_of(module, path, set(library_modules())) for module, path in library_modules().items()}


def test_imports_point_down_only():
    upward = [f"{module} -> {target}" for module, targets in GRAPH.items() for target, _ in targets
              if floor(target) > floor(module)]
    assert not upward, upward


def test_distillation_uses_the_task_definitions_never_the_rl_loop():
    wrong = [f"{module} -> {target}" for module, targets in GRAPH.items() if module.startswith("distill")
             for target, _ in targets if target.startswith("specialists") and target not in DISTILL_MAY_USE]
    assert not wrong, wrong


def test_no_in_tree_import_hides_in_a_function():
    hidden = [f"{module} -> {target}" for module, targets in GRAPH.items() for target, inside in targets if inside]
    assert not hidden, hidden


def test_no_circle_of_files():
    edges = {module: {t for t, _ in targets if t != module} for module, targets in GRAPH.items()}
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in edges:
        if module not in state:
            visit(module, [module])


def test_every_module_imports_first():
    """Each library module imported first, with none of the library loaded before it (third-party
    packages stay cached): an import-order circle shows up as an ImportError here."""
    script = (
        "import importlib, sys\n"
        f"modules = {sorted(library_modules())!r}\n"
        f"ours = {PACKAGES!r}\n"
        "for module in modules:\n"
        "    for name in [n for n in sys.modules if n.split('.')[0] in ours]:\n"
        "        del sys.modules[name]\n"
        "    importlib.import_module(module)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
