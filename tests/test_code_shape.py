"""The shape of the library a maintainer can change safely: small files and functions, and no writes into
other libraries' objects (private fields, ``__class__`` swaps, ``__dict__`` entries, patched modules)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

VISION = Path(__file__).resolve().parents[1] / "vision"
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 60

# Writes into objects the project does not own that are justified: (file, line's source text) -> reason.
ALLOWED_WRITES: dict[tuple[str, str], str] = {}


def python_files() -> list[Path]:
    return sorted(VISION.rglob("*.py"))


def relative(path: Path) -> str:
    return path.relative_to(VISION.parent).as_posix()


def test_ruff_is_clean():
    """``ruff check .`` with the project's rules (pyproject.toml) finds nothing, in the library, the tests
    and the benchmarks."""
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", "."],
                         cwd=VISION.parent, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_no_file_over_450_lines():
    long = {relative(p): n for p in python_files() if (n := len(p.read_text(encoding="utf-8").splitlines()))
            > MAX_FILE_LINES}
    assert not long, f"split these files (over {MAX_FILE_LINES} lines): {long}"


def test_no_function_over_60_lines():
    long = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{relative(path)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, f"split these functions (over {MAX_FUNCTION_LINES} lines): {long}"


def third_party_names(tree: ast.Module) -> set[str]:
    """Names a module binds to other libraries' modules or objects (``import x``, ``from x import y``)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if not a.name.startswith("vision")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and not (node.module or "").startswith("vision"):
            names |= {a.asname or a.name for a in node.names}
    return names


def root_name(node: ast.expr) -> str | None:
    """``torch`` for ``torch.backends.cudnn``; None when the chain does not start at a name."""
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def flatten(targets: list[ast.expr]) -> list[ast.expr]:
    """The assigned expressions of ``a, (b, c) = ...``: a, b, c."""
    out = []
    for target in targets:
        out += flatten(list(target.elts)) if isinstance(target, (ast.Tuple, ast.List)) else [target]
    return out


def foreign_writes(path: Path) -> list[tuple[int, str]]:
    """(line, what) for each write into an object the module does not own: an attribute whose name starts
    with "_" on anything but ``self``/``cls``, ``__class__``, a ``__dict__`` entry, an attribute of an
    imported library module or object, ``setattr``/``delattr``/``object.__setattr__`` on anything but
    ``self``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = third_party_names(tree)
    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AugAssign, ast.AnnAssign)) else []
        for target in flatten(targets):
            owner = target.value if isinstance(target, (ast.Attribute, ast.Subscript)) else None
            own = isinstance(owner, ast.Name) and owner.id in ("self", "cls")
            if isinstance(target, ast.Attribute) and not own and target.attr.startswith("_"):
                found.append((node.lineno, f"assigns .{target.attr}"))
            elif isinstance(target, ast.Attribute) and root_name(owner) in imported:
                found.append((node.lineno, f"patches {ast.unparse(target)}"))
            elif isinstance(target, ast.Subscript) and isinstance(owner, ast.Attribute) and owner.attr == "__dict__":
                found.append((node.lineno, "writes a __dict__ entry"))
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            first = node.args[0] if node.args else None
            on_self = isinstance(first, ast.Name) and first.id == "self"
            if name in ("setattr", "delattr", "__setattr__", "__delattr__") and not on_self:
                found.append((node.lineno, f"calls {name}"))
    return found


def test_no_writes_into_other_libraries_objects():
    found = []
    for path in python_files():
        lines = path.read_text(encoding="utf-8").splitlines()
        for line, what in foreign_writes(path):
            key = (relative(path), lines[line - 1].strip())
            if key not in ALLOWED_WRITES:
                found.append(f"{key[0]}:{line} {what}: {key[1]}")
    assert not found, "use the library's public API instead:\n" + "\n".join(found)


@pytest.mark.parametrize("source, expected", [
    ("import torch\ntorch.backends.x = 1\n", ["patches torch.backends.x"]),
    ("from gradio import processing_utils\nprocessing_utils.save = f\n", ["patches processing_utils.save"]),
    ("def f(pipe):\n    pipe.__class__ = C\n", ["assigns .__class__"]),
    ("def f(unet):\n    unet.__dict__['forward'] = g\n", ["writes a __dict__ entry"]),
    ("def f(a, b):\n    a._x, b.y = 1, 2\n", ["assigns ._x"]),
    ("import os\nos.environ['X'] = '1'\n", []),  # setting an environment variable is os.environ's API
    ("def f(p, k, v):\n    setattr(p, k, v)\n", ["calls setattr"]),
    ("class A:\n    def f(self):\n        self._x = 1\n        object.__setattr__(self, 'y', 2)\n", []),
])
def test_the_write_finder_itself(tmp_path, source, expected):
    path = tmp_path / "m.py"
    path.write_text(source)
    assert [what for _, what in foreign_writes(path)] == expected
