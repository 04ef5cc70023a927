"""Tests use adpulse through its public names only, so a private rename never breaks a test
and every seam a test needs is a documented one (a parameter or a public constant).

Walks the syntax tree of every test module and fails on ``from adpulse... import _name``,
on ``module._name`` where ``module`` is an adpulse module bound by an import (read,
``monkeypatch.setattr(module, "_name", ...)`` included), and on string targets such as
``monkeypatch.setattr("adpulse.x._name", ...)``. Dunder names (``__version__``) are public.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

TESTS = Path(__file__).parent


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _is_module(dotted: str) -> bool:
    try:
        return inspect.ismodule(importlib.import_module(dotted))
    except ImportError:
        return False


def private_uses(source: str, filename: str = "<test>") -> list[str]:
    """Each use of a private adpulse name in ``source``, as ``line: what``."""
    tree = ast.parse(source, filename)
    modules: set[str] = set()  # local names bound to adpulse modules
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "adpulse" or alias.name.startswith("adpulse."):
                    if any(_private(part) for part in alias.name.split(".")):
                        found.append(f"{node.lineno}: import {alias.name}")
                    modules.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module != "adpulse" and not node.module.startswith("adpulse."):
                continue
            if any(_private(part) for part in node.module.split(".")):
                found.append(f"{node.lineno}: from {node.module} import ...")
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
                elif _is_module(f"{node.module}.{alias.name}"):
                    modules.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            if isinstance(node.value, ast.Name) and node.value.id in modules:
                found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
        elif isinstance(node, ast.Call) and len(node.args) >= 2:
            target, name = node.args[0], node.args[1]
            func = node.func
            setattr_like = (isinstance(func, ast.Attribute) and func.attr == "setattr") or (
                isinstance(func, ast.Name) and func.id == "setattr"
            )
            if (
                setattr_like
                and isinstance(target, ast.Name)
                and target.id in modules
                and isinstance(name, ast.Constant)
                and isinstance(name.value, str)
                and _private(name.value)
            ):
                found.append(f"{node.lineno}: setattr({target.id}, {name.value!r})")
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            dotted = text.startswith("adpulse.") and " " not in text and "/" not in text
            if dotted and any(_private(part) for part in text.split(".")):
                found.append(f"{node.lineno}: {text!r}")
    return sorted(set(found), key=lambda s: int(s.split(":")[0]))


def test_no_test_uses_a_private_adpulse_name() -> None:
    offenders = {
        str(path.relative_to(TESTS)): uses
        for path in sorted(TESTS.rglob("*.py"))
        if (uses := private_uses(path.read_text(), str(path)))
    }
    assert offenders == {}, (
        "tests must use adpulse's public names only; give the code a public seam (a"
        f" documented parameter or a public constant) or test through the public API: {offenders}"
    )


def test_the_check_finds_each_kind_of_private_use() -> None:
    source = """
from adpulse.processor.steps import decode
from adpulse.serving import queries as q
from adpulse.storage.warehouse.base import _hidden, Warehouse
import adpulse.transport.embedded as embedded

def test(monkeypatch):
    monkeypatch.setattr(decode, "_BLOCK", 3)
    q._reader(None)
    embedded._MAX_OPEN_PARTITIONS
    monkeypatch.setattr("adpulse.processor.steps.decode._BLOCK", 3)
    decode.BLOCK_RECORDS, q.__name__, Warehouse._other  # public, dunder, not a module
"""
    assert private_uses(source) == [
        "4: from adpulse.storage.warehouse.base import _hidden",
        "8: setattr(decode, '_BLOCK')",
        "9: q._reader",
        "10: embedded._MAX_OPEN_PARTITIONS",
        "11: 'adpulse.processor.steps.decode._BLOCK'",
    ]


def test_no_test_module_imports_another() -> None:
    """Shared helpers live in builder modules (tests/builders.py and the like), never in
    a test module: importing one would also pull its fixtures and tests along."""
    test_modules = {path.stem for path in TESTS.rglob("test_*.py")}
    offenders: dict[str, list[str]] = {}
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module.split(".")[0]]
            if hits := [n for n in names if n in test_modules]:
                offenders.setdefault(str(path.relative_to(TESTS)), []).extend(hits)
    assert offenders == {}
