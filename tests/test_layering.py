"""Known mistakes, each with its reason and a sample it must catch (STYLE.md item 12)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(source: str) -> set[str]:
    """Absolute names of what a module imports, relative imports resolved to the forkspec layout
    only by their first component (`..model` -> `model`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                names.add("." * node.level + module)
            else:
                names.add(module)
    return names


# The one exception root (oracle/errors.py) is the tool's, shared by every part.
ALLOWED = {"oracle.errors"}


def reaches(folder: str, path: Path, names: set[str], forbidden: str) -> bool:
    """Whether a file inside `folder` imports the sibling top-level package `forbidden`."""
    depth = len(path.relative_to(ROOT / folder).parts)      # 1 for folder/x.py
    for name in names:
        if name.removeprefix("forkspec.").lstrip(".") in ALLOWED:
            continue
        if name.startswith("forkspec." + forbidden) or name == forbidden or name.startswith(forbidden + "."):
            return True
        if name.startswith("."):
            level = len(name) - len(name.lstrip("."))
            rest = name.lstrip(".")
            if level == depth + 1 and (rest == forbidden or rest.startswith(forbidden + ".")):
                return True
    return False


RULES = [
    # (folder, forbidden sibling, reason)
    ("model", "impl", "model/ and impl/ are two independent implementations of one semantics; "
                      "a differential test between them is worthless if one reads the other"),
    ("impl", "model", "impl/ must not borrow the reference's answers (DESIGN.md 'Taste')"),
    ("model", "oracle", "the model is pure; the oracle depends on it, not the other way round"),
    ("impl", "oracle", "impl exports plain data; the abstraction to the model lives in oracle/"),
]


def python_files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("folder,forbidden,reason", RULES, ids=[f"{f}-does-not-import-{g}" for f, g, _ in RULES])
def test_layering(folder: str, forbidden: str, reason: str) -> None:
    offenders = [str(p.relative_to(ROOT)) for p in python_files(folder)
                 if reaches(folder, p, imported_modules(p.read_text()), forbidden)]
    assert not offenders, f"{', '.join(offenders)} import {forbidden}/: {reason}"


def test_layering_rule_catches_samples() -> None:
    sample = ROOT / "model" / "x.py"
    assert reaches("model", sample, imported_modules("from ..impl import kernel"), "impl")
    assert reaches("model", sample, imported_modules("import forkspec.impl.kernel"), "impl")
    assert not reaches("model", sample, imported_modules("from ..specs import abi"), "impl")
    assert not reaches("model", sample, imported_modules("from .impl_notes import x"), "impl")
    assert not reaches("impl", ROOT / "impl" / "x.py", imported_modules("from ..oracle.errors import E"), "oracle")
    assert reaches("impl", ROOT / "impl" / "x.py", imported_modules("from ..oracle.program import Step"), "oracle")


# impl/ must be deterministic: a replay is only a replay if the kernel makes the same choices.
NONDETERMINISM = re.compile(r"^\s*(import random|from random import|import secrets)|\btime\.time\(\)|\bos\.urandom\(",
                            re.M)


def test_impl_uses_no_host_randomness_or_clock() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in python_files("impl") if NONDETERMINISM.search(p.read_text())]
    assert not offenders, f"{offenders}: host randomness or wall-clock time in impl/ breaks deterministic replay"


def test_nondeterminism_rule_catches_samples() -> None:
    assert NONDETERMINISM.search("import random\n")
    assert NONDETERMINISM.search("x = time.time()")
    assert not NONDETERMINISM.search("t = time.monotonic()  # budget only")


BARE_EXCEPT = re.compile(r"^\s*except\s*:", re.M)


@pytest.mark.parametrize("folder", ["model", "impl", "oracle", "specs"])
def test_no_bare_except(folder: str) -> None:
    offenders = [str(p.relative_to(ROOT)) for p in python_files(folder) if BARE_EXCEPT.search(p.read_text())]
    assert not offenders, f"{offenders}: a bare except hides the kernel bugs forkspec exists to find"


def test_every_package_is_listed_in_pyproject() -> None:
    """A folder with an __init__.py that pyproject.toml does not list is missing from a normal install."""
    text = (ROOT / "pyproject.toml").read_text()
    for init in ROOT.glob("*/**/__init__.py"):
        rel = init.parent.relative_to(ROOT)
        if rel.parts[0] not in ("model", "impl", "oracle", "specs"):
            continue
        name = "forkspec." + ".".join(rel.parts)
        assert f'"{name}"' in text, f"{name} ({rel}/) is not in pyproject.toml's packages list"
