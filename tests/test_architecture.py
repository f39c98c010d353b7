"""The shape of the package, enforced by parsing it (nothing is imported):

- layers: a module imports only from its own layer or below (`LAYERS`); the algorithms import
  only layers 0-2, never each other (`ALGORITHM_IMPORTS` lists the exceptions);
- no import circle between rlreason modules (module-level and function-local imports both count);
- no module over `MAX_LINES` lines, no notebook over `MAX_NOTEBOOK_CODE_LINES` code lines;
- the floor (layer 0) never imports torch, and vLLM (optional) is imported inside functions only;
- nothing in rlreason/ or notebooks/ cites files outside the repository.

The checks are plain functions on parsed sources, unit-tested on synthetic inputs first, so that
none of them can pass by checking nothing; the `test_package_*` tests run them on the repository.
"""
from __future__ import annotations

import ast
import json
from collections import deque
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "rlreason"
MAX_LINES = 430
MAX_NOTEBOOK_CODE_LINES = 40
ROOT_INIT = "__init__"
"""The key of the package's own `__init__` in `LAYERS` (importing any module runs it)."""

LAYERS: dict[str, int] = {
    ROOT_INIT: 0,
    # 0. the floor: pure Python, never imports torch
    "problems": 0, "grading": 0, "steps": 0, "metrics": 0, "data": 0, "world": 0, "config": 0,
    "profiles": 0, "runs": 0, "io": 0, "names": 0, "selfcheck": 0, "vllm_settings": 0,
    # 1. models, tokens and sampling
    "tokenizer": 1, "models": 1, "batching": 1, "training": 1, "parallel": 1, "precision": 1,
    "sampling": 1, "distributed": 1, "smollm": 1,
    # 2. what scores and evaluates samples
    "evaluation": 2, "rewards": 2, "rl_math": 2, "orm": 2,
    # 3. the algorithms
    "ei": 3, "ppo": 3, "ppo_rollouts": 3, "rcrl": 3, "rcrl_decoding": 3, "rcrl_labels": 3,
    "rcrl_likelihood": 3,
    # 4. the stages, wiring the algorithms from a profile
    "stages": 4,
    # 5. analysis of results
    "analysis": 5, "plots": 5,
    # 6. one function per notebook section
    "report": 6, "__main__": 6,
}
"""Layer of each module, by name relative to the package. A subpackage's modules share the
package's layer unless listed themselves (`"orm.model": 2`). A module not listed fails the test."""

ALGORITHM_LAYER = 3
ALGORITHM_IMPORTS = {("ppo", "ppo_rollouts"), ("rcrl", "rcrl_decoding"), ("rcrl", "rcrl_labels"), ("rcrl_decoding", "rcrl_labels"),
                     ("rcrl_likelihood", "rcrl"), ("rcrl_likelihood", "rcrl_decoding")}
"""The only imports allowed between two modules of the algorithm layer."""

FLOOR_FORBIDDEN = ("torch", "transformers", "peft", "bitsandbytes", "vllm")
"""Imports that pull in torch: never in the floor (module-level or in a function)."""
FUNCTION_ONLY = ("vllm",)
"""Optional dependencies: imported only inside functions, so that the package imports without."""
OUTSIDE_REFERENCES = ("PAPER.md", "../shared")
"""Files that are not in this repository: code and notebooks must not cite them."""


class Import(NamedTuple):
    target: str
    """Dotted module name: an rlreason module (resolved to the module or package that exists,
    else the name as written) or an outside module as written (`torch.nn`)."""
    line: int
    local: bool
    """Inside a function (runs when the function does, not at import)."""


class Module(NamedTuple):
    name: str
    """Dotted name, `rlreason.sampling.hf`; a package is named by its folder."""
    lines: int
    imports: list[Import]


# ---- the checks ---------------------------------------------------------------------------------


def short(name: str) -> str:
    """`rlreason.sampling.hf` -> `sampling.hf`; the package itself -> `__init__`."""
    return ROOT_INIT if name == PACKAGE else name.removeprefix(PACKAGE + ".")


def module_name(path: Path, package_dir: Path) -> tuple[str, bool]:
    """(dotted name, is a package's `__init__`) of a file under the package folder."""
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def imports_of(source: str, name: str, is_package: bool, modules: set[str]) -> list[Import]:
    """Every import in `source` (module `name`), with rlreason targets resolved: `from .x import y`
    targets module `x.y` when it exists, else `x`."""
    here = name if is_package else name.rpartition(".")[0]
    out: list[Import] = []

    def resolve(base: str, names: list[str]) -> list[str]:
        if not is_internal(base):
            return [base]
        found = [f"{base}.{n}" for n in names if f"{base}.{n}" in modules]
        return found + ([base] if len(found) < len(names) else [])

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                out.extend(Import(a.name, child.lineno, local) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    parts = here.split(".")
                    if child.level - 1 >= len(parts):
                        continue  # beyond the top: not importable
                    base = ".".join(parts[: len(parts) - (child.level - 1)])
                    base = f"{base}.{child.module}" if child.module else base
                else:
                    base = child.module or ""
                if base == "__future__":
                    continue
                targets = resolve(base, [a.name for a in child.names])
                out.extend(Import(t, child.lineno, local) for t in targets)
            visit(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                     ast.Lambda)))

    visit(ast.parse(source), False)
    return out


def is_internal(target: str) -> bool:
    return target == PACKAGE or target.startswith(PACKAGE + ".")


def edges(modules: list[Module]) -> dict[tuple[str, str], Import]:
    """Import edges between rlreason modules, first import of each pair. Importing `a.b.c` also
    runs packages `a.b` and `a` (edges to them), except those the importer itself belongs to."""
    out: dict[tuple[str, str], Import] = {}
    for m in modules:
        for imp in m.imports:
            if not is_internal(imp.target):
                continue
            parts = imp.target.split(".")
            for i in range(len(parts), 1, -1):  # the target, then its packages (not the root)
                target = ".".join(parts[:i])
                if i < len(parts) and (m.name == target or m.name.startswith(target + ".")):
                    break  # the importer's own package: already running
                if target != m.name:
                    out.setdefault((m.name, target), imp)
    return out


def find_cycles(graph: dict[tuple[str, str], Import]) -> list[list[str]]:
    """One shortest circle per strongly connected group of modules, as `[a, b, ..., a]`."""
    succ: dict[str, list[str]] = {}
    for a, b in graph:
        succ.setdefault(a, []).append(b)
        succ.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in succ[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(succ):
        if v not in index:
            connect(v)
    cycles = []
    for group in sorted(groups):
        start, members = group[0], set(group)
        parent: dict[str, str] = {start: start}
        queue = deque([start])
        while queue:  # breadth first: the shortest way back to start
            v = queue.popleft()
            if v != start and start in succ[v]:
                path = [v]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                cycles.append(path[::-1] + [start])
                break
            for w in sorted(succ[v]):
                if w in members and w not in parent:
                    parent[w] = v
                    queue.append(w)
    return cycles


def describe_cycle(cycle: list[str], graph: dict[tuple[str, str], Import]) -> str:
    steps = [f"{short(a)}:{graph[a, b].line}{' (in a function)' if graph[a, b].local else ''}"
             for a, b in zip(cycle, cycle[1:])]
    return f"import circle {' -> '.join(map(short, cycle))} (imports at {', '.join(steps)})"


def layer_of(name: str, layers: dict[str, int]) -> int | None:
    """The layer of the module or of its closest listed package."""
    parts = short(name).split(".")
    for i in range(len(parts), 0, -1):
        key = ".".join(parts[:i])
        if key in layers:
            return layers[key]
    return None


def unknown_modules(modules: list[Module], layers: dict[str, int]) -> list[str]:
    """Modules without a layer, and imports of rlreason modules that do not exist."""
    names = {m.name for m in modules}
    out = [f"{short(m.name)} has no layer: add it to LAYERS in tests/test_architecture.py"
           for m in modules if layer_of(m.name, layers) is None]
    out += [f"{short(m.name)}:{imp.line} imports {imp.target}, which does not exist"
            for m in modules for imp in m.imports if is_internal(imp.target)
            and imp.target not in names]
    return out


def upward_imports(graph: dict[tuple[str, str], Import], layers: dict[str, int]) -> list[str]:
    """Imports of a higher layer, and imports between two algorithms (`ALGORITHM_IMPORTS` aside)."""
    out = []
    for (a, b), imp in sorted(graph.items()):
        la, lb = layer_of(a, layers), layer_of(b, layers)
        if la is None or lb is None:
            continue  # reported by unknown_modules
        where = f"{short(a)}:{imp.line}{' (in a function)' if imp.local else ''}"
        if lb > la:
            out.append(f"{where} (layer {la}) imports {short(b)} (layer {lb})")
        elif (la == lb == ALGORITHM_LAYER and short(a).split(".")[0] != short(b).split(".")[0]
              and (short(a), short(b)) not in ALGORITHM_IMPORTS):
            out.append(f"{where} imports {short(b)}: an algorithm imports only layers 0-2")
    return out


def oversized(modules: list[Module], limit: int = MAX_LINES) -> list[str]:
    return [f"{short(m.name)} has {m.lines} lines (limit {limit})"
            for m in modules if m.lines > limit]


def floor_heavy_imports(modules: list[Module], layers: dict[str, int]) -> list[str]:
    return [f"{short(m.name)}:{imp.line} imports {imp.target} (the floor, layer 0, never imports "
            "torch)" for m in modules if layer_of(m.name, layers) == 0 for imp in m.imports
            if imp.target.split(".")[0] in FLOOR_FORBIDDEN]


def module_level_optional_imports(modules: list[Module]) -> list[str]:
    return [f"{short(m.name)}:{imp.line} imports {imp.target} at module level (optional: import "
            "it inside the function that needs it)" for m in modules for imp in m.imports
            if imp.target.split(".")[0] in FUNCTION_ONLY and not imp.local]


def notebook_code_lines(notebook: dict) -> int:
    """Non-blank, non-comment lines of the notebook's code cells (the parameters cell too)."""
    count = 0
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        count += sum(1 for line in source.splitlines()
                     if line.strip() and not line.strip().startswith("#"))
    return count


def outside_references(files: list[Path], root: Path) -> list[str]:
    out = []
    for path in files:
        data = path.read_bytes()
        for ref in OUTSIDE_REFERENCES:
            at = data.find(ref.encode())
            if at >= 0:
                line = data[:at].count(b"\n") + 1
                out.append(f"{path.relative_to(root)}:{line} cites {ref} (not in this repository)")
    return out


def shadowed_files(files: list[Path], root: Path) -> list[str]:
    """`x.py` beside a package folder `x/`: Python imports the package, the file is dead code."""
    present = set(files)
    return [f"{p.relative_to(root)} is shadowed by the package {p.relative_to(root).with_suffix('')}/"
            " (Python imports the package): delete one" for p in files
            if p.name != "__init__.py" and p.with_suffix("") / "__init__.py" in present]


def package_files(package_dir: Path) -> list[Path]:
    return sorted(p for p in package_dir.rglob("*.py") if "__pycache__" not in p.parts)


def parse_package(package_dir: Path) -> list[Module]:
    """The modules Python would import (a file shadowed by a package is left out)."""
    files = package_files(package_dir)
    files = [p for p in files if p.name == "__init__.py"
             or p.with_suffix("") / "__init__.py" not in set(files)]
    named = {p: module_name(p, package_dir) for p in files}
    names = {name for name, _ in named.values()}
    modules = []
    for path, (name, is_package) in named.items():
        source = path.read_text()
        modules.append(Module(name, len(source.splitlines()),
                              imports_of(source, name, is_package, names)))
    return modules


# ---- the checks on synthetic inputs -------------------------------------------------------------


def synthetic(sources: dict[str, str]) -> list[Module]:
    """Modules from {"rlreason/x.py": source}."""
    named = {rel: module_name(ROOT / rel, ROOT / PACKAGE) for rel in sources}
    names = {name for name, _ in named.values()}
    return [Module(name, len(src.splitlines()), imports_of(src, name, is_package, names))
            for (rel, src), (name, is_package) in zip(sources.items(), named.values())]


def test_imports_are_resolved_relative_absolute_and_in_functions():
    source = ("from __future__ import annotations\n"
              "import torch.nn\n"
              "from .base import Sample\n"
              "from ..models import load_policy\n"
              "from .. import ppo, VALUE\n"
              "from rlreason.io import read_jsonl\n"
              "if TYPE_CHECKING:\n"
              "    from ..orm import ORMScorer\n"
              "class A:\n"
              "    def f(self):\n"
              "        from . import vllm\n")
    modules = {"rlreason", "rlreason.sampling", "rlreason.sampling.base", "rlreason.sampling.hf",
               "rlreason.sampling.vllm", "rlreason.models", "rlreason.ppo", "rlreason.io",
               "rlreason.orm"}
    got = imports_of(source, "rlreason.sampling.hf", False, modules)
    assert got == [Import("torch.nn", 2, False), Import("rlreason.sampling.base", 3, False),
                   Import("rlreason.models", 4, False), Import("rlreason.ppo", 5, False),
                   Import("rlreason", 5, False), Import("rlreason.io", 6, False),
                   Import("rlreason.orm", 8, False), Import("rlreason.sampling.vllm", 11, True)]
    # A package's __init__: `.` is the package itself.
    assert imports_of("from .hf import HFSampler\n", "rlreason.sampling", True, modules) == [
        Import("rlreason.sampling.hf", 1, False)]
    assert module_name(ROOT / "rlreason/sampling/__init__.py", ROOT / PACKAGE) == (
        "rlreason.sampling", True)
    assert module_name(ROOT / "rlreason/ei.py", ROOT / PACKAGE) == ("rlreason.ei", False)


def test_a_circle_is_found_through_function_local_imports():
    modules = synthetic({
        "rlreason/a.py": "from .b import x\n",
        "rlreason/b.py": "def f():\n    from .c import y\n",
        "rlreason/c.py": "from . import a\n",
        "rlreason/d.py": "from .a import z\n",  # imports into the circle, not part of it
    })
    graph = edges(modules)
    assert find_cycles(graph) == [["rlreason.a", "rlreason.b", "rlreason.c", "rlreason.a"]]
    assert describe_cycle(find_cycles(graph)[0], graph) == (
        "import circle a -> b -> c -> a (imports at a:1, b:2 (in a function), c:1)")
    assert find_cycles(edges(synthetic({"rlreason/a.py": "from .b import x\n",
                                        "rlreason/b.py": "import os\n"}))) == []


def test_a_package_importing_its_modules_is_no_circle_but_outsiders_run_the_package():
    modules = synthetic({
        "rlreason/sampling/__init__.py": "from .hf import HFSampler\n",
        "rlreason/sampling/hf.py": "from .base import Sample\nfrom ..models import m\n",
        "rlreason/sampling/base.py": "import torch\n",
        "rlreason/models.py": "import torch\n",
        "rlreason/evaluation.py": "from .sampling.base import Sample\n",
    })
    graph = edges(modules)
    assert find_cycles(graph) == []
    assert ("rlreason.evaluation", "rlreason.sampling") in graph  # runs sampling/__init__
    assert ("rlreason.sampling.hf", "rlreason.sampling") not in graph
    # ... so a module that the package's __init__ reaches, importing back into it, is a circle.
    modules += synthetic({"rlreason/models.py": "from .sampling.base import Sample\n"})
    assert find_cycles(edges(modules[:3] + modules[4:])) == [
        ["rlreason.models", "rlreason.sampling", "rlreason.sampling.hf", "rlreason.models"]]


def test_upward_imports_and_unknown_modules_are_reported():
    layers = {"low": 0, "high": 1, "pkg": 2, "pkg.floor": 0, "ei": 3, "ppo": 3, "rcrl": 3,
              "rcrl_decoding": 3}
    modules = synthetic({
        "rlreason/low.py": "def f():\n    from .high import x\n",
        "rlreason/high.py": "from .low import y\nfrom .pkg import z\n",
        "rlreason/pkg/__init__.py": "",
        "rlreason/pkg/floor.py": "from ..high import w\n",
        "rlreason/ei.py": "from .ppo import p\n",
        "rlreason/ppo.py": "from .low import y\n",
        "rlreason/rcrl.py": "from .rcrl_decoding import d\n",
        "rlreason/rcrl_decoding.py": "",
        "rlreason/stray.py": "from .gone import g\n",
    })
    assert upward_imports(edges(modules), layers) == [
        "ei:1 imports ppo: an algorithm imports only layers 0-2",
        "high:2 (layer 1) imports pkg (layer 2)",
        "low:2 (in a function) (layer 0) imports high (layer 1)",
        "pkg.floor:1 (layer 0) imports high (layer 1)",
    ]
    assert unknown_modules(modules, layers) == [
        "stray has no layer: add it to LAYERS in tests/test_architecture.py",
        "stray:1 imports rlreason.gone, which does not exist",
    ]
    assert layer_of("rlreason.pkg.other", layers) == 2 and layer_of("rlreason.pkg.floor", layers) == 0


def test_size_torch_and_optional_import_checks():
    modules = synthetic({
        "rlreason/grading.py": "import re\n" * 431,
        "rlreason/steps.py": "def f():\n    import torch\n" + "x = 1\n" * 428,
        "rlreason/hf.py": "import vllm\ndef f():\n    from vllm.lora import R\n",
    })
    assert oversized(modules) == ["grading has 431 lines (limit 430)"]
    layers = {"grading": 0, "steps": 0, "hf": 1}
    assert floor_heavy_imports(modules, layers) == [
        "steps:2 imports torch (the floor, layer 0, never imports torch)"]
    assert module_level_optional_imports(modules) == [
        "hf:1 imports vllm at module level (optional: import it inside the function that needs it)"]


def test_notebook_code_lines_skip_markdown_blanks_and_comments():
    notebook = {"cells": [
        {"cell_type": "markdown", "source": ["# Title\n", "text\n"]},
        {"cell_type": "code", "source": ["# parameters\n", "profile = 'smoke'\n", "\n", "seed = 0"]},
        {"cell_type": "code", "source": "import x\n   # indented comment\nx.run()\n"},
    ]}
    assert notebook_code_lines(notebook) == 4


def test_a_file_shadowed_by_a_package_is_reported_and_not_parsed(tmp_path):
    for rel in ("rlreason/__init__.py", "rlreason/orm.py", "rlreason/orm/__init__.py",
                "rlreason/orm/model.py", "rlreason/ei.py"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("import torch\n")
    assert shadowed_files(package_files(tmp_path / "rlreason"), tmp_path) == [
        "rlreason/orm.py is shadowed by the package rlreason/orm/ (Python imports the package): "
        "delete one"]
    assert [m.name for m in parse_package(tmp_path / "rlreason")] == [
        "rlreason", "rlreason.ei", "rlreason.orm", "rlreason.orm.model"]


def test_outside_references_are_found_with_their_line(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n# see PAPER.md\n")
    (tmp_path / "b.ipynb").write_text('{"source": ["open(\\"../shared/x\\")"]}')
    (tmp_path / "c.py").write_text("fine\n")
    assert outside_references(sorted(tmp_path.iterdir()), tmp_path) == [
        "a.py:2 cites PAPER.md (not in this repository)",
        "b.ipynb:1 cites ../shared (not in this repository)",
    ]


# ---- the checks on the repository ---------------------------------------------------------------


@pytest.fixture(scope="module")
def package() -> list[Module]:
    modules = parse_package(ROOT / PACKAGE)
    assert len(modules) > 10 and any(m.imports for m in modules)
    return modules


def fail_on(problems: list[str]) -> None:
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems)


def test_package_modules_all_have_a_layer(package):
    fail_on(shadowed_files(package_files(ROOT / PACKAGE), ROOT) + unknown_modules(package, LAYERS))


def test_package_has_no_upward_import(package):
    fail_on(upward_imports(edges(package), LAYERS))


def test_package_has_no_import_circle(package):
    graph = edges(package)
    fail_on([describe_cycle(c, graph) for c in find_cycles(graph)])


def test_package_modules_stay_under_the_size_limit(package):
    fail_on(oversized(package))


def test_package_floor_never_imports_torch(package):
    fail_on(floor_heavy_imports(package, LAYERS))


def test_package_imports_vllm_only_inside_functions(package):
    fail_on(module_level_optional_imports(package))


def test_package_notebooks_are_thin():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    fail_on([f"notebooks/{nb.name} has {n} code lines (limit {MAX_NOTEBOOK_CODE_LINES})"
             for nb in notebooks
             if (n := notebook_code_lines(json.loads(nb.read_text()))) > MAX_NOTEBOOK_CODE_LINES])


def test_package_cites_nothing_outside_the_repository():
    files = sorted(p for folder in (PACKAGE, "notebooks") for p in (ROOT / folder).rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts
                   and ".ipynb_checkpoints" not in p.parts)
    assert files
    fail_on(outside_references(files, ROOT))
