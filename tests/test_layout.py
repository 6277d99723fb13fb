"""The import layout: leaves below the kernels, kernels that do not import the ops, no import cycles (issue 16).
Read from the source files (every import, including those inside functions), not from an import of the package."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lossval_fast"
# modules that import nothing from the package: what kernels and ops both build on
LEAVES = ["lossval_fast.sinkhorn_loop", "lossval_fast.base", "lossval_fast.op_checks", "lossval_fast.op_autograd"]
# the extension loader reads only its generated build record
# cycles still to break (none: the last, valuation/lossval.py <-> chunked.py, went with the LossVal package)
KNOWN_CYCLES: list = []


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(dotted: str) -> bool:
    base = PACKAGE.parent / dotted.replace(".", "/")
    # _build_info.py is generated from _build_info.py.in at build time (data only)
    return any(Path(str(base) + suffix).exists() for suffix in (".py", ".py.in", "/__init__.py"))


def _imports(path: Path) -> set[str]:
    """Package modules `path` imports (absolute and relative, anywhere in the file)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    tree = ast.parse(path.read_text())
    # imports under `if TYPE_CHECKING:` are for annotations only: they never run
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
                   for stmt in node.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lossval_fast")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("lossval_fast"):
                continue
            modules = {target + "." + a.name for a in node.names if _is_module(target + "." + a.name)}
            # `from . import ops` imports a module; `from .x import name` the module x
            found |= modules if modules else {target}
    found.discard(name)
    return found


def _graph() -> dict:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def test_leaves_import_nothing_from_the_package():
    graph = _graph()
    for leaf in LEAVES:
        assert leaf in graph, leaf
        assert not graph[leaf], (leaf, graph[leaf])
    assert graph["lossval_fast._extension"] <= {"lossval_fast._build_info"}, graph["lossval_fast._extension"]


def test_no_kernel_module_imports_the_ops():
    graph = _graph()
    offenders = {m: sorted(i for i in imports if i == "lossval_fast.ops" or i.startswith("lossval_fast.ops."))
                 for m, imports in graph.items() if m.startswith("lossval_fast.triton")}
    assert not any(offenders.values()), offenders


def _cycles(graph: dict) -> list[set]:
    """Strongly connected components of more than one module (Tarjan), ignoring a package's own __init__ edges
    (importing a submodule runs its package's __init__, which is not an import cycle in the code)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    edges = {m: {i for i in imports if i in graph and not m.startswith(i + ".")} for m, imports in graph.items()}

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_beyond_the_known_ones():
    cycles = _cycles(_graph())
    unknown = [c for c in cycles if c not in KNOWN_CYCLES]
    assert not unknown, unknown


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def _package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def test_private_names_are_imported_only_within_their_package():
    """`from X import _name` only from a module of the importer's own package (siblings share their privates);
    across packages only public names (e.g. distributed imports valuation.lossval's Data, not _Data)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        package = _package_of(name, path)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")
                source = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("lossval_fast"):
                continue
            home = source if _is_module(source) and (PACKAGE.parent / source.replace(".", "/")).is_dir() \
                else source.rpartition(".")[0]
            for alias in node.names:
                private = alias.name.startswith("_") and not alias.name.startswith("__")
                if private and not _is_module(source + "." + alias.name) and home != package:
                    offenders.append(f"{name}: from {source} import {alias.name}")
    assert not offenders, offenders


# functions longer than this are split (issue 16: a function reads on one screen)
MAX_FUNCTION_LINES = 80


def test_functions_fit_on_a_screen():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{_module_name(path)}.{node.name}: {lines} lines")
    assert not long, long
