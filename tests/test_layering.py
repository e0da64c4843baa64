"""The package's layering, read from its imports (docs/ARCHITECTURE.md): every import points down.

Each subpackage (and each plumbing module at the top) has a rank; a module may import its own
package and anything of a lower rank, never a higher rank or a sibling of the same rank. Imports
inside functions count too. ``reference/`` (the tests' oracle) is imported only by tests and
``bench/``; ``arc/``, ``samples/`` and ``answers/`` never import torch, so loading tasks, drawing
samples and voting run without it."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "arcfast"

# rank of each part of arcfast: arcfast.<part>[...]
RANKS = {
    "_core": 0, "files": 0, "runtime": 0, "models": 0, "budget": 0,
    "arc": 1,
    "samples": 2, "answers": 2,
    "kernels": 3,
    "model": 4,
    "lora": 5,
    "train": 6, "infer": 6,
    "run": 7,
    "cli": 8,
}
# Outside the layers: the benchmarks and the tests' oracle may import any part; `arcfast/__init__`
# (the lazy public API) and `python -m arcfast` sit on top.
FREE = {"bench", "reference", "__init__", "__main__"}
TORCH_FREE = {"arc", "samples", "answers"}
HEAVY = ("torch", "transformers", "peft", "triton", "unsloth")


def _modules():
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), p


def _imports(name: str, path: Path):
    """(imported module, line) for every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            for a in n.names:
                yield a.name, n.lineno
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = pkg[: len(pkg) - (n.level - 1)]
                mod = ".".join(base + ([n.module] if n.module else []))
            else:
                mod = n.module or ""
            if n.module is None or mod == "arcfast":
                for a in n.names:   # `from .. import _core`, `from . import vocab`
                    yield f"{mod}.{a.name}", n.lineno
            else:
                yield mod, n.lineno


PARTS = {p.stem for p in ROOT.iterdir() if p.suffix in (".py", ".so") or (p / "__init__.py").exists()}
PARTS |= {p.name.split(".")[0] for p in ROOT.glob("_core*")}


def _part(module: str) -> str:
    """The part of arcfast a module belongs to; a name of the package itself (``arcfast``,
    ``arcfast.__version__``) is ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PARTS else "__init__"


MODULES = list(_modules())


def test_every_part_has_a_rank():
    """A new subpackage or top-level module must be placed in the layering."""
    parts = {_part(m) for m, _ in MODULES}
    assert parts - set(RANKS) - FREE == set()


def upward_imports(modules) -> list:
    """Every import of ``modules`` ((name, path) pairs) that breaks the layering."""
    wrong = []
    for name, path in modules:
        me = _part(name)
        if me in FREE:
            continue
        for target, line in _imports(name, path):
            if not target.startswith("arcfast."):
                continue
            other = _part(target)
            if other == me:
                continue
            if other == "__init__" and me == "cli":   # the version the CLI prints
                continue
            if other in ("bench", "reference"):
                if not (other == "bench" and me == "cli"):   # `arcfast bench` runs them
                    wrong.append(f"{path}:{line}: {name} imports {target} (outside the layers)")
            elif other not in RANKS or RANKS[other] >= RANKS[me]:
                wrong.append(f"{path}:{line}: {name} (rank {RANKS[me]}) imports {target} "
                             f"(rank {RANKS.get(other)})")
    return wrong


def heavy_imports(modules, part: str) -> list:
    return [f"{path}:{line}: {target}" for name, path in modules if _part(name) == part
            for target, line in _imports(name, path) if target.split(".")[0] in HEAVY]


def test_every_import_points_down():
    assert upward_imports(MODULES) == []


def test_reference_only_from_tests_and_bench():
    users = {name for name, path in MODULES if _part(name) not in ("reference", "bench")
             for target, _ in _imports(name, path) if target.startswith("arcfast.reference")}
    assert users == set()


@pytest.mark.parametrize("part", sorted(TORCH_FREE))
def test_torch_free_parts(part):
    """Not even inside a function: these parts run where torch is not installed."""
    assert heavy_imports(MODULES, part) == []


def test_the_checks_catch_what_they_forbid(tmp_path):
    """A module of arc/ importing run/, a sibling of the same rank, the oracle, and torch inside a
    function: each is reported."""
    bad = tmp_path / "arcfast" / "arc" / "x.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from ..run.ttft import TTFTRun\n\n\ndef f():\n    import torch\n")
    sib = tmp_path / "arcfast" / "train" / "y.py"
    sib.parent.mkdir(parents=True)
    sib.write_text("from ..infer import generate\nfrom arcfast.reference import pipeline\nfrom ..model import decoder\n")
    mods = [("arcfast.arc.x", bad), ("arcfast.train.y", sib)]
    wrong = upward_imports(mods)
    assert len(wrong) == 3 and "arcfast.run.ttft" in wrong[0]
    assert any("imports arcfast.infer " in w for w in wrong) and any("reference" in w for w in wrong)
    assert heavy_imports(mods, "arc") == [f"{bad}:5: torch"]


# What an import inside a function may be for, in a module that imports torch at its top anyway:
# an optional or slow package, a kernel (Triton), a command's own module, or a guarded import.
LAZY_OK = HEAVY + ("flash_attn", "matplotlib", "tokenizers", "safetensors")
LAZY_PARTS = ("arcfast.kernels", "arcfast.bench", "arcfast.cli", "arcfast.train.backends")


def hidden_imports(modules) -> list:
    """Imports inside functions of torch-importing modules that have no reason to hide: stdlib,
    numpy, torch itself, or an arcfast module (a torch-free module hides its imports to stay
    light, which is their reason)."""
    import sys

    found = []
    for name, path in modules:
        if _part(name) in FREE:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = {t.split(".")[0] for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
               for t in ([a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""])}
        if "torch" not in top:
            continue
        guarded = {id(c) for n in ast.walk(tree) if isinstance(n, (ast.Try, ast.If, ast.With))
                   for c in ast.walk(n) if isinstance(c, (ast.Import, ast.ImportFrom))}
        inner = {id(x): x for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for x in ast.walk(f) if isinstance(x, (ast.Import, ast.ImportFrom))}
        for n in inner.values():
            if id(n) in guarded:
                continue
            targets = [t for t, line in _imports(name, path) if line == n.lineno]
            for t in targets:
                root = t.split(".")[0]
                lazy = root in LAZY_OK or t.startswith(LAZY_PARTS) or (
                    root == "torch" and "flex_attention" in t)   # torch >= 2.5 only
                if not lazy and (root in sys.stdlib_module_names or root in ("numpy", "torch", "arcfast")):
                    found.append(f"{path}:{n.lineno}: {t}")
    return found


def test_no_import_hides_in_a_function_without_a_reason():
    assert hidden_imports(MODULES) == []
