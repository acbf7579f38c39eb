"""The package's shape: layers that import only downwards (import-linter's contract in .importlinter), no import
cycle among its modules (function-level and type-only imports counted), few top-level modules, short files."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tokenalign"
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_the_cycle_finder_finds_a_planted_cycle(tmp_path):
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from cyclic import b  # function-level: counted\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from cyclic import a\n")
    (package / "c.py").write_text("from cyclic import a\n")
    sys.path.insert(0, str(tmp_path))
    try:
        assert _import_cycles(grimp.build_graph("cyclic", cache_dir=None)) == [["cyclic.a", "cyclic.b"]]
    finally:
        sys.path.remove(str(tmp_path))


def test_no_import_cycle_among_tokenalign_modules():
    assert _import_cycles(grimp.build_graph("tokenalign", cache_dir=None)) == []


def test_only_the_entry_point_and_the_run_config_sit_at_the_top():
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == ["__init__.py", "cli.py", "config.py"]


def test_modules_are_short_enough_to_hold_one_concept():
    lengths = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {p: n for p, n in lengths.items() if n > 400} == {}
    assert {p: n for p, n in lengths.items() if p.startswith("tokenalign/run/") and n > 250} == {}


def test_the_layers_contract_holds_and_refuses_an_upward_import(tmp_path):
    """`lint-imports` passes on the package, and fails, naming the contract and the import, once a low layer
    (buffers) imports the run layer."""
    kept = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    copy = tmp_path / "tree"
    shutil.copytree(PACKAGE, copy / "tokenalign", ignore=shutil.ignore_patterns("assets", "__pycache__"))
    shutil.copy(ROOT / ".importlinter", copy / ".importlinter")
    errors = copy / "tokenalign" / "buffers" / "errors.py"
    errors.write_text(errors.read_text() + "\nfrom tokenalign.run import trainer  # noqa: E402,F401\n")
    broken = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=copy, capture_output=True, text=True, timeout=120,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(copy)})
    assert broken.returncode != 0
    assert "tokenalign.buffers is not allowed to import tokenalign.run" in broken.stdout
    assert "tokenalign.buffers.errors -> tokenalign.run.trainer" in broken.stdout
