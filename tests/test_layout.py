"""The house rules, checked: which folder may import which, and dvc.yaml's code deps equal each stage's imports.

A stage's code deps in dvc.yaml must be exactly the project files its `python -m tasks.<stage>`
imports, transitively (package `__init__.py` files included): a missing one leaves the stage wrongly
"up to date" after a change, an extra one reruns it for nothing.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PACKAGES = ("lab2prod", "tasks", "models", "flows")
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def imported_modules(path: Path) -> set[str]:
    """Dotted names of every project module a file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` may name a module: count it when such a file exists
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in PACKAGES and module_file(n) is not None}
    return found


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def import_closure(module: str) -> set[str]:
    """Project files (relative paths) that running `python -m <module>` imports, packages' __init__ included."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            prefix = ".".join(parts[:i])
            if prefix not in seen and module_file(prefix) is not None:
                seen.add(prefix)
                todo += sorted(imported_modules(module_file(prefix)))
    return {module_file(m).relative_to(ROOT).as_posix() for m in seen}


def code_deps(stage: dict) -> set[str]:
    return {d for d in stage["deps"] if d.endswith(".py")}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_dvc_code_deps_are_exactly_the_stage_imports(name: str) -> None:
    stage = STAGES[name]
    assert stage["cmd"] == f"python -m tasks.{name}"
    expected, listed = import_closure(f"tasks.{name}"), code_deps(stage)
    assert listed == expected, (
        f"dvc.yaml stage '{name}': missing {sorted(expected - listed)}, not imported {sorted(listed - expected)}. "
        f"Its code deps should be:\n" + "\n".join(f"      - {f}" for f in sorted(expected))
    )


def project_files(*folders: str) -> list[Path]:
    return [p for folder in folders for p in sorted((ROOT / folder).rglob("*.py"))]


def test_tasks_holds_exactly_the_stages_and_no_stage_imports_another() -> None:
    modules = {p.stem for p in (ROOT / "tasks").glob("*.py")} - {"__init__"}
    assert modules == set(STAGES), "tasks/ is for the dvc.yaml stages only; shared code goes in lab2prod/"
    for path in project_files("tasks"):
        others = {m for m in imported_modules(path) if m.startswith("tasks.") and m != f"tasks.{path.stem}"}
        assert not others, f"{path.relative_to(ROOT)} imports the stage(s) {sorted(others)}"


def test_models_import_neither_tasks_nor_flows_and_nothing_imports_tests() -> None:
    for path in project_files("models"):
        bad = {m for m in imported_modules(path) if m.split(".")[0] in ("tasks", "flows")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
    for path in project_files("lab2prod", "tasks", "models", "flows", "benchmarks"):
        tree = ast.parse(path.read_text())
        imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in imports if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in imports if isinstance(n, ast.ImportFrom) and n.module]
        assert not [n for n in names if n.split(".")[0] == "tests"], f"{path.relative_to(ROOT)} imports tests/"


def test_closure_follows_imports_inside_functions(tmp_path: Path) -> None:
    """The checker itself: it sees lazy imports, and the stage files it reports exist."""
    closure = import_closure("tasks.compress")
    assert "models/compress/compression.py" in closure and "models/nets/networks.py" in closure
    assert all((ROOT / f).is_file() for f in closure)
    assert "flows/pipeline.py" not in closure


def test_lab2prod_command_lists_its_subcommands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lab2prod.cli.main", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"},
    ).stdout
    for command in ("run", "predict", "registry", "retrain", "prefect"):
        assert f" {command} " in out, command
    registry = subprocess.run(
        [sys.executable, "-m", "lab2prod.cli.main", "registry", "--help"],
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"},
    ).stdout
    for command in ("list", "show", "promote", "rollback"):
        assert f" {command} " in registry, command


TORCH_SIDE = ("torch", "torchvision", "lightning", "timm", "kornia", "torch_pruning", "torchmetrics", "models", "tasks")


def test_lab2prod_is_torch_free_and_only_its_cli_imports_flows() -> None:
    """lab2prod/ (data, registry, serving, monitoring, the command) never imports the training side; models/
    may import lab2prod, tasks/ and flows/ import both. Imports inside functions count too."""
    for path in project_files("lab2prod"):
        roots = {m.split(".")[0] for m in all_imports(path)}
        rel = path.relative_to(ROOT).as_posix()
        assert not roots & set(TORCH_SIDE), f"{rel} imports {sorted(roots & set(TORCH_SIDE))}"
        if not rel.startswith("lab2prod/cli/"):
            assert "flows" not in roots, f"{rel} imports flows/: only the command (lab2prod/cli/) may"


def all_imports(path: Path) -> set[str]:
    """Every module name a file imports, project or not, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_serving_side_runs_without_torch(tmp_path: Path) -> None:
    """Importing the serving, prediction, registry and monitoring modules loads no torch-side module at all."""
    code = (
        "import sys; import lab2prod.serve.app, lab2prod.serve.predict, lab2prod.registry.promotion, "
        "lab2prod.monitor.check, lab2prod.cli.main; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {TORCH_SIDE!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]", out


def test_dvc_outputs_are_the_workspace_paths_and_its_params_are_settings() -> None:
    """dvc.yaml's outs, metrics and plots are exactly where lab2prod.core.layout.Workspace says the stages write,
    and every key a stage lists under params: exists in the settings schema."""
    from dataclasses import fields

    from lab2prod.core.layout import Workspace
    from lab2prod.core.settings import validate_params

    ws = Workspace()
    roots = [getattr(ws, f.name) for f in fields(ws)]
    declared = []
    for name, stage in STAGES.items():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                path = Path(next(iter(entry)) if isinstance(entry, dict) else entry)
                declared.append(path)
                assert any(path == r or r in path.parents for r in roots), (
                    f"{name}: {kind} {path} is not a Workspace path"
                )
    for root in roots:
        assert any(p == root or root in p.parents or p in root.parents for p in declared), f"nothing declares {root}"
    settings = validate_params({}).model_dump()
    for name, stage in STAGES.items():
        for key in stage.get("params", []):
            node = settings
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, (
                    f"dvc.yaml stage {name}: params key {key!r} is no setting"
                )
                node = node[part]
