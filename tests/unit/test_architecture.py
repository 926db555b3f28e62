"""Layering rules at run time: no subsystem package imports the UI toolkit; command modules stay light to
import. (The static layer contracts are in pyproject.toml, checked by lint-imports.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "lepetpal_tui"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
            if node.module.startswith("lepetpal_tui.ui"):
                names.add("lepetpal_tui.ui")
    return names


@pytest.mark.parametrize("layer", ["arm", "feetech", "policy", "engine", "settings", "sim", "record"])
def test_layer_has_no_ui_imports(layer: str) -> None:
    offenders = {
        str(p.relative_to(PKG)): sorted(_imports(p) & {"textual", "rich", "lepetpal_tui.ui"})
        for p in (PKG / layer).rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_cli_help_imports_no_heavy_modules() -> None:
    code = (
        "import sys; from lepetpal_tui.cli import build_parser; build_parser(); "
        "print(','.join(sorted(m for m in ('torch', 'lerobot', 'textual', 'transformers') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
