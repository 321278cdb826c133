"""agent/ray/ is one package whose modules import one way: no module imports one that imports
it back (at module level or inside a function: the old ray_pool ↔ ray_apps cycle was both), each
imports on its own, and importing the package, ``hop`` or ``proxy`` does not import Ray."""

from __future__ import annotations

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

import agent.ray

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "agent" / "ray"
MODULES = sorted(f"agent.ray.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def imports(path: Path) -> set[str]:
    """The ``agent.ray`` modules (and the package itself) that ``path`` imports, anywhere."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found.update(n for n in names if n == "agent.ray" or n in MODULES)
    return found


def graph() -> dict[str, set[str]]:
    return {m: imports(PACKAGE / f"{m.rsplit('.', 1)[1]}.py") for m in MODULES}


def test_the_package_has_the_ray_modules() -> None:
    assert {"agent.ray.apps", "agent.ray.hop", "agent.ray.pool", "agent.ray.proxy",
            "agent.ray.replica"} <= set(MODULES)
    assert not list((ROOT / "agent").glob("ray_*.py"))


def test_the_import_graph_is_acyclic() -> None:
    deps = graph()
    for module, targets in deps.items():
        assert "agent.ray" not in targets, f"{module} imports the package: import the module"
        assert module not in targets, module
    order = list(graphlib.TopologicalSorter(deps).static_order())  # CycleError on a cycle
    assert order.index("agent.ray.hop") < order.index("agent.ray.pool") \
        < order.index("agent.ray.apps")
    assert deps["agent.ray.hop"] == deps["agent.ray.proxy"] == set()


def test_a_cycle_would_be_found() -> None:
    deps = {**graph(), "agent.ray.hop": {"agent.ray.apps"}}
    with pytest.raises(graphlib.CycleError):
        list(graphlib.TopologicalSorter(deps).static_order())


def test_the_init_only_re_exports() -> None:
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)}
    assert defined == {"__getattr__"}
    assert sorted(agent.ray.__all__) == sorted(agent.ray._WHERE)
    for name in agent.ray.__all__:
        value = getattr(agent.ray, name)
        assert getattr(value, "__module__", None) == f"agent.ray.{agent.ray._WHERE[name]}"
    with pytest.raises(AttributeError):
        agent.ray.nothing_here  # noqa: B018


def run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    ray_init = Path(run(f"import {module}, ray; print(ray.__file__)"))
    assert ray_init.parent != PACKAGE and ray_init.parent.name == "ray"  # the real one


def test_the_package_hop_and_proxy_do_not_import_ray() -> None:
    assert run("import sys, agent, agent.ray, agent.ray.hop, agent.ray.proxy; "
               "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
               ) == "[]"
