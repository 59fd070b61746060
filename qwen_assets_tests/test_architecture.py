"""The layout holds: imports run one way, every error meant for a person sits in one tree,
and what `dg scaffold defs` writes is loaded. Seconds; no corpus, model or build."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import qwen_assets
from qwen_assets import errors

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SEALED = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_ASSETS_")}


def run_in(root: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """``command`` in ``root``, which is where qwen_assets is imported from."""
    return subprocess.run(
        command,
        cwd=root,
        env={**SEALED, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """import-linter over the qwen_assets package found first from ``root``."""
    return run_in(root, str(BIN / "lint-imports"), "--no-cache")


def project_copy(tmp_path: Path) -> Path:
    """The package and pyproject.toml, as a project checked out elsewhere."""
    root = tmp_path / "project"
    shutil.copytree(
        REPO / "qwen_assets",
        root / "qwen_assets",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    return root


def test_imports_run_one_way():
    checked = lint_imports(REPO)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "2 kept, 0 broken" in checked.stdout


def test_the_import_contracts_catch_a_wrong_way_import_and_dagster_in_the_pipeline(
    tmp_path: Path,
):
    root = project_copy(tmp_path)
    corpus = root / "qwen_assets" / "pipeline" / "corpus.py"
    corpus.write_text(corpus.read_text() + "\nfrom qwen_assets.orchestration import stale\n")
    metrics = root / "qwen_assets" / "pipeline" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\nimport dagster\n")
    checked = lint_imports(root)
    assert checked.returncode != 0
    assert "0 kept, 2 broken" in checked.stdout, checked.stdout
    assert "qwen_assets.pipeline.corpus -> qwen_assets.orchestration.stale" in checked.stdout
    assert "qwen_assets.pipeline.metrics -> dagster" in checked.stdout


def project_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class the package defines, by name (each module imported)."""
    for info in pkgutil.walk_packages(qwen_assets.__path__, "qwen_assets."):
        importlib.import_module(info.name)
    found: dict[str, type[BaseException]] = {}
    for name, module in list(sys.modules.items()):
        if name != "qwen_assets" and not name.startswith("qwen_assets."):
            continue
        for _, member in inspect.getmembers(module, inspect.isclass):
            if issubclass(member, BaseException) and member.__module__ == name:
                found[member.__name__] = member
    return found


def drawn_tree() -> dict[str, str | None]:
    """The tree in the errors module's docstring: each error's parent as drawn (a name's
    column, in steps of four, is its depth)."""
    block = (errors.__doc__ or "").split("::", 1)[1].split("\n\n")[1]
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    for line in block.splitlines():
        found = re.match(r"^ {4}([│├└─ ]*)([A-Z]\w+)", line)
        assert found, f"not a line of the tree: {line!r}"
        depth = len(found.group(1)) // 4
        del stack[depth:]
        parents[found.group(2)] = stack[-1] if stack else None
        stack.append(found.group(2))
    return parents


def test_every_error_is_in_the_one_tree_its_docstring_draws():
    """An error added, moved or given another parent without the drawing fails here."""
    defined = project_exceptions()
    drawn = drawn_tree()
    assert set(defined) == set(drawn), "the docstring of qwen_assets/errors.py draws every error"
    for name, kind in defined.items():
        assert issubclass(kind, errors.QwenAssetsError), f"{name} is outside the tree"
        parent = next((base.__name__ for base in kind.__mro__[1:] if base.__name__ in drawn), None)
        assert parent == drawn[name], f"{name} derives from {parent}, drawn under {drawn[name]}"


DG = BIN / "dg"


@pytest.mark.skipif(not DG.exists(), reason="dg (dagster-dg-cli) is not installed")
def test_an_asset_dg_scaffolds_loads_beside_the_projects_own(tmp_path: Path):
    root = project_copy(tmp_path)
    scaffolded = run_in(root, str(DG), "scaffold", "defs", "dagster.asset", "scaffolded_asset.py")
    assert scaffolded.returncode == 0, scaffolded.stderr
    assert (root / "qwen_assets" / "defs" / "scaffolded_asset.py").is_file()
    listing = (
        "import qwen_assets.definitions as d, sys; "
        "assert d.__file__.startswith(sys.argv[1]), d.__file__; "
        "print(sorted(s.key.to_user_string() for s in d.defs.resolve_all_asset_specs()))"
    )
    loaded = run_in(root, sys.executable, "-c", listing, str(root))
    assert loaded.returncode == 0, loaded.stderr
    keys = loaded.stdout
    assert "'scaffolded_asset'" in keys and "'task_embeddings'" in keys, keys
