"""The package keeps DESIGN.md's layers and owners: the import contracts in .importlinter
hold, and nothing outside exec/ starts a process by any route an import check misses."""
from __future__ import annotations

import ast
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "shoal"
# ways to start a process that need no `import subprocess`
SPAWNERS = {("asyncio", "create_subprocess_exec"), ("asyncio", "create_subprocess_shell"),
            ("os", "fork"), ("os", "forkpty"), ("os", "posix_spawn"), ("os", "posix_spawnp"),
            ("os", "system"), ("os", "popen"), ("os", "execv"), ("os", "execve"), ("os", "execvp"),
            ("os", "execvpe"), ("os", "spawnv"), ("os", "spawnvp")}


def test_import_contracts_hold():
    assert lint_imports(config_filenames=(str(ROOT / ".importlinter"),), no_cache=True, no_logo=True) == 0


def test_only_exec_starts_processes():
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] == "exec":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and (node.value.id, node.attr) in SPAWNERS):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}")
    assert not found, f"processes started outside shoal/exec: {found}"
