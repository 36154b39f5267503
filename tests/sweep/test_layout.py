"""The layout is a rule, not a wish: each package of the sweep imports only those before it (the order
sweep/__init__.py gives), says what it owns, and the pure ones load no heavy library."""
import ast
from pathlib import Path

import pytest

from conftest import ROOT

SWEEP = ROOT / "sweep"
ORDER = ["errors", "interrupts", "spec", "queue", "tracking", "adaptive", "execute", "results", "handin", "cli"]
RANK = {"errors": 0, "interrupts": 0, "stats": 0, **{name: i for i, name in enumerate(ORDER)}}
# What a package may not load at all, even inside a function: it would not be pure any more.
NEVER = {"spec": {"torch", "mlflow", "optuna", "pandas"}, "queue": {"torch", "mlflow", "optuna", "pandas"},
         "adaptive": {"torch", "mlflow"}, "interrupts": {"torch", "mlflow", "click"}}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in a module of the sweep, at any depth."""
    package = ".".join(path.relative_to(SWEEP.parent).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    else:
        package = package.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
                found += [(node.lineno, f"{module}.{alias.name}" if not node.module else module) for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def part_of(module: str) -> str:
    """The package (or top-level module) of the sweep that `module` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


MODULES = sorted(p for p in SWEEP.rglob("*.py") if p.parent.name != "handin" or p.name != "mnist.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SWEEP)))
def test_each_module_imports_only_the_packages_before_its_own(path):
    mine = part_of(".".join(path.relative_to(SWEEP.parent).with_suffix("").parts))
    if mine not in RANK:
        return  # sweep/__init__.py
    for line, module in imports(path):
        if module.startswith("sweep."):
            theirs = part_of(module)
            assert RANK[theirs] <= RANK[mine], (
                f"{path.relative_to(SWEEP.parent)}:{line} imports {module}: {mine} comes before {theirs}")
        assert module.split(".")[0] not in NEVER.get(mine, ()), f"{path.relative_to(SWEEP.parent)}:{line}: {module}"


def test_the_standalone_script_imports_nothing_of_the_project():
    modules = {m.split(".")[0] for _, m in imports(SWEEP / "handin" / "mnist.py")}
    assert not modules & {"sweep", "mnist_core"}


@pytest.mark.parametrize("package", [p for p in ORDER if (SWEEP / p).is_dir()])
def test_each_package_says_what_it_owns_and_what_it_may_import(package):
    doc = ast.get_docstring(ast.parse((SWEEP / package / "__init__.py").read_text())) or ""
    assert len(doc) > 100 and "import" in doc, f"sweep/{package}/__init__.py: {doc!r}"
