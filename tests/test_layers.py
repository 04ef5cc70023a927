"""The import rules between layers, read from the source (no module is imported).

The layers run sources -> transport -> processor -> storage -> serving -> operations,
with the command line on top and :mod:`adpulse.runtime` wiring them. An import that
points back up (the processor reaching into serving, operations into the CLI) ties a
lower layer to a higher one; new capabilities plug in through seams instead (commit
listeners, the URL registry). Imports inside functions and ``TYPE_CHECKING`` blocks count
too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "adpulse"

#: Packages below serving, and what none of their modules may import.
LOWER = ("processor", "storage", "transport", "sources")
ABOVE_LOWER = ("adpulse.serving", "adpulse.operations", "adpulse.cli")


def imported_modules(path: Path, root: Path = SRC) -> set[str]:
    """Every absolute module name ``path`` (under ``root``, the ``adpulse`` package)
    imports, relative imports resolved."""
    package = ".".join(("adpulse", *path.relative_to(root).with_suffix("").parts))
    if path.name != "__init__.py":
        package = package.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def violations(rule: str, importer: str, imported: set[str], banned: tuple[str, ...]) -> list[str]:
    return [
        f"{importer} imports {name} ({rule})"
        for name in sorted(imported)
        if any(name == b or name.startswith(b + ".") for b in banned)
    ]


def layer_violations(root: Path = SRC) -> list[str]:
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        top = relative.parts[0]
        imported = imported_modules(path, root)
        if top in LOWER:
            found += violations(f"{top}/ sits below serving", str(relative), imported, ABOVE_LOWER)
        if top not in ("cli", "__main__.py"):  # ``python -m adpulse`` starts the CLI
            found += violations(
                "only the CLI imports the CLI", str(relative), imported, ("adpulse.cli",)
            )
    return found


def test_no_import_points_back_up() -> None:
    assert layer_violations() == []


@pytest.mark.parametrize(
    ("where", "source", "expected"),
    [
        (
            "processor/x.py",
            "from adpulse.serving.live import LiveWarehouse",
            "processor/x.py imports adpulse.serving.live (processor/ sits below serving)",
        ),
        (
            "transport/x.py",
            "def f():\n    import adpulse.operations.demo",
            "transport/x.py imports adpulse.operations.demo (transport/ sits below serving)",
        ),
        (
            "operations/x.py",
            "from ..cli import runtime",
            "operations/x.py imports adpulse.cli (only the CLI imports the CLI)",
        ),
    ],
)
def test_the_rule_catches_a_back_import(
    tmp_path: Path, where: str, source: str, expected: str
) -> None:
    path = tmp_path / where
    path.parent.mkdir(parents=True)
    path.write_text(source + "\n")
    assert expected in layer_violations(tmp_path)
