"""The package's shape in figures, for a restructuring's before and after.

    .venv/bin/python launch/structure.py                  # sizes, top-level modules, cycles
    .venv/bin/python launch/structure.py --moves          # and the two traced start-ups
    .venv/bin/python launch/structure.py --root /tmp/old  # another checkout (same venv)

Sizes: lines of each module of hvdl/ (all lines, as `wc -l` counts them), the modules over 300
lines and the functions over 40 (decorators and docstring included), the modules at the top level
of the package. Cycles: the import cycles between hvdl's modules, imports inside functions
included (an edge a → b for every `import`/`from ... import` of b anywhere in a, but under
`if TYPE_CHECKING:`).

Moves: how often a reader following the code from `hvdl/train.py`'s `main` to the first optimizer
step changes file, counted by tracing a real run: the functions of hvdl/ in the order the run
first calls each (a reader reads each once, loops and repeats not again), and a move wherever
one's file differs from the one before. Two runs: LeNet-5 on MNIST under `mpirun -np 2` (rank 0
traced) and a DBN on a CSV table in one process.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODULE_LINES, FUNCTION_LINES = 300, 40

# Traced by `--trace` in a child process (the training command's argv follows it).
TRACER = """
import os, runpy, sys
package = os.path.join(sys.argv[1], "hvdl") + os.sep
out = sys.argv[2]
state = {"last": None, "moves": 0, "done": False, "seen": set()}

def hook(frame, event, arg):
    if state["done"] or event != "call":
        return
    code = frame.f_code
    if code.co_name == "step" and "torch/optim/" in code.co_filename:
        state["done"] = True
        if os.environ.get("OMPI_COMM_WORLD_RANK", "0") == "0":
            with open(out, "w") as f:
                f.write(str(state["moves"]))
        sys.setprofile(None)
        return
    if code.co_filename.startswith(package) and code not in state["seen"]:
        state["seen"].add(code)  # a reader reads each function once, where the run first calls it
        here = code.co_filename[len(package):]
        if here != state["last"]:
            state["moves"] += state["last"] is not None
            state["last"] = here

sys.argv = ["hvdl.train", *sys.argv[3:]]
sys.setprofile(hook)
runpy.run_module("hvdl.train", run_name="__main__")
"""


def modules(root: Path) -> dict[str, list[str]]:
    """Every module of the package under `root`: its path from hvdl/ and its lines."""
    return {str(p.relative_to(root / "hvdl")): p.read_text().splitlines()
            for p in sorted((root / "hvdl").rglob("*.py"))}


def long_functions(text: str) -> list[tuple[str, int]]:
    """(qualified name, lines) of the functions longer than FUNCTION_LINES."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                    size = child.end_lineno - first + 1
                    if size > FUNCTION_LINES:
                        found.append((name, size))
                visit(child, name + ".")
    visit(ast.parse(text), "")
    return found


def imports(path: str, text: str, known: set[str]) -> set[str]:
    """The hvdl modules `path` imports, anywhere in it: `from P import M` counts as an import of
    the module P.M where there is one, else of P (the package a module is in is not counted)."""
    package = ["hvdl", *Path(path).with_suffix("").parts[:-1]]
    tree, names = ast.parse(text), set()
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", "") == "TYPE_CHECKING"
                   for n in ast.walk(block)}  # never run: not an import
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                names.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return names & known


def module_name(path: str) -> str:
    parts = Path(path).with_suffix("").parts
    return ".".join(["hvdl", *(parts[:-1] if parts[-1] == "__init__" else parts)])


def cycles(found: dict[str, list[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module in the import graph (Tarjan)."""
    names = {module_name(p): p for p in found}
    edges = {m: sorted(n for n in imports(p, "\n".join(found[p]), set(names)) if n != m)
             for m, p in names.items()}
    index, low, stack, on, groups = {}, {}, [], set(), []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))
    sys.setrecursionlimit(10_000)
    for v in sorted(edges):
        if v not in index:
            connect(v)
    return groups


def sizes(root: Path) -> dict:
    found = modules(root)
    lines = {p: len(t) for p, t in found.items()}
    return {
        "modules": len(found), "lines": sum(lines.values()),
        "top_level_modules": sorted(p for p in found if "/" not in p and p != "__init__.py"
                                    and p != "__main__.py"),
        "over_300": {p: n for p, n in sorted(lines.items(), key=lambda x: -x[1])
                     if n > MODULE_LINES},
        "functions_over_40": {f"{p}:{name}": n for p, t in found.items()
                              for name, n in long_functions("\n".join(t))},
        "median_module_lines": float(np.median(list(lines.values()))),
        "import_cycles": cycles(found),
    }


def traced(root: Path, launcher: list[str], argv: list[str], env: dict[str, str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "moves"
        script = Path(tmp) / "trace.py"
        script.write_text(TRACER)
        cmd = [*launcher, sys.executable, str(script), str(root), str(out), *argv,
               "--results_dir", str(Path(tmp) / "runs")]
        subprocess.run(cmd, cwd=root, env={**os.environ, **env, "PYTHONPATH": str(root)},
                       check=True, capture_output=True, timeout=600)
        return int(out.read_text())


def csv_table(folder: Path) -> Path:
    """600 rows of 64 features and a label column, for the DBN run."""
    rng = np.random.default_rng(0)
    x = rng.random((600, 64)).round(3)
    y = rng.integers(0, 4, 600)
    path = folder / "table.csv"
    header = ",".join(f"f{j}" for j in range(64)) + ",label\n"
    path.write_text(header + "".join(",".join(map(str, r)) + f",{c}\n" for r, c in zip(x, y)))
    return path


def moves(root: Path) -> dict[str, int]:
    mpirun = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", "2"]
    with tempfile.TemporaryDirectory() as tmp:
        table = csv_table(Path(tmp))
        return {
            "lenet5_mpirun_np2": traced(root, mpirun, [
                "--model", "lenet5", "--train_size", "600", "--max_steps", "2"], {}),
            "dbn_csv": traced(root, [], [
                "--model", "dbn_small", "--layers", "0,32,0", "--data.path", str(table),
                "--data.label", "label", "--rbm.pretrain_epochs", "1", "--rbm.finetune_epochs",
                "1", "--max_steps", "2"], {}),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to measure")
    parser.add_argument("--moves", action="store_true", help="also trace the two start-ups")
    args = parser.parse_args(argv)
    found = sizes(args.root)
    if args.moves:
        found["moves_to_first_step"] = moves(args.root)
    print(json.dumps(found, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
