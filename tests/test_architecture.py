"""The package's shape: imports point downward, one stage contract, no copied blocks (docs/architecture.md).

Why tests: a layout rots one convenient import at a time. These read the source (ast), import nothing
heavy, and fail with the offending module or block named.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "reflection_lab"
BASE = ("core", "models", "format", "llm")
STAGE_PACKAGES = ("data", "reflect", "scoring", "selection", "finetune", "inference", "evaluate")
ENTRY = ("cli", "pipeline", "profiles", "notebook", "server", "__init__", "__main__")


def _modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(ROOT).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, list[str]]]:
    """(imported module, names) of every import in a module: top level, in functions, under TYPE_CHECKING."""
    path = MODULES[name]
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            out.append((target, names))
            out += [(f"{target}.{n}", []) for n in names if f"{target}.{n}" in MODULES]
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return [(t, n) for t, n in out if t in MODULES and t != name]


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for m in MODULES:
        for t, _ in _imports(m):
            if not t.startswith(m + ".") and not m.startswith(t + "."):  # a package re-exporting its children
                edges[m].add(t)
    return edges


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check can fail
    cycles = find_cycles(_edges())
    assert not cycles, f"import cycles: {cycles}"


def test_the_base_imports_no_stage_and_stages_import_no_entry_point():
    bad = []
    for m in MODULES:
        layer = _layer(m)
        for t, _ in _imports(m):
            target = _layer(t)
            if layer in BASE and (target in STAGE_PACKAGES or target in ENTRY):
                bad.append(f"{m} -> {t}")
            if layer in STAGE_PACKAGES and target in ENTRY and target != "profiles":
                bad.append(f"{m} -> {t}")
    assert not bad, "imports must point downward (base <- stages <- entry points): " + "; ".join(bad)


def test_stages_import_only_earlier_stages():
    order = {p: i for i, p in enumerate(STAGE_PACKAGES)}
    bad = [f"{m} -> {t}" for m in MODULES for t, _ in _imports(m)
           if _layer(m) in order and _layer(t) in order and order[_layer(t)] > order[_layer(m)]]
    assert not bad, "a stage may use an earlier stage's results, never a later one's: " + "; ".join(bad)


def test_no_module_imports_another_modules_private_names():
    bad = [f"{m} imports {t}.{n}" for m in MODULES for t, names in _imports(m) for n in names
           if n.startswith("_") and not n.startswith("__")]
    assert not bad, "; ".join(bad)


@pytest.mark.parametrize("stage", ["data", "reflect", "score", "select", "finetune", "infer", "evaluate"])
def test_every_stage_has_the_same_contract(stage):
    from reflection_lab.core.config import StageConfig
    from reflection_lab.pipeline import stage_parts
    from reflection_lab.profiles import get_profile

    config_cls, fn = stage_parts(stage)
    assert fn.__name__ == f"run_{stage}" and issubclass(config_cls, StageConfig) and config_cls.STAGE == stage
    params = list(inspect.signature(fn).parameters.values())
    assert [p.name for p in params[:2]] == ["run", "config"]
    assert params[1].default is None, "a stage runs with its default config when given none"
    kw = {p.name: p for p in params[2:]}
    assert kw["force"].kind is inspect.Parameter.KEYWORD_ONLY and kw["force"].default is False
    assert kw["progress"].kind is inspect.Parameter.KEYWORD_ONLY and kw["progress"].default is True
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[2:])
    config = config_cls.from_profile(get_profile("ci"))
    assert isinstance(config, config_cls)
    assert isinstance(config.as_dict(), dict)


def test_pipeline_lists_the_run_directorys_stages_in_order():
    from reflection_lab.core.runs import STAGES
    from reflection_lab.pipeline import STAGE_FUNCTIONS

    assert list(STAGE_FUNCTIONS) == list(STAGES)


def _blocks(path: Path, size: int) -> list[tuple[tuple[str, ...], int]]:
    """Every run of `size` consecutive meaningful lines (stripped; blank, comment and bracket-only lines skipped)."""
    lines = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        s = raw.strip()
        if s and not s.startswith("#") and s.strip("()[]{},:") and not s.startswith(("import ", "from ", '"""')):
            lines.append((s, n))
    return [(tuple(t for t, _ in lines[i:i + size]), lines[i][1]) for i in range(len(lines) - size + 1)]


def duplicated_blocks(paths: list[Path], size: int = 6) -> list[str]:
    """Places where a run of `size` meaningful lines stands again, anywhere in the given files."""
    seen: dict[tuple[str, ...], tuple[Path, int]] = {}
    twice = []
    for path in paths:
        for block, line in _blocks(path, size):
            first = seen.setdefault(block, (path, line))
            if first != (path, line) and (first[0] != path or line - first[1] >= size):
                twice.append(f"{first[0].name}:{first[1]} ~ {path.name}:{line}")
    return twice


def test_no_block_of_six_lines_stands_twice(tmp_path):
    copy = tmp_path / "copy.py"
    body = "\n".join(f"x{i} = compute({i})" for i in range(6))
    copy.write_text(body + "\n\n" + body + "\n")
    assert duplicated_blocks([copy]) and not duplicated_blocks([MODULES["reflection_lab.core.paths"]])
    twice = duplicated_blocks(sorted(MODULES.values()))
    assert not twice, "the same six lines stand twice (make one function): " + "; ".join(twice[:5])
