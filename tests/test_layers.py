"""The layer contracts of [tool.importlinter] in pyproject.toml (run by `make lint` too): they hold for
the tree, every top-level module has a place in them, and they catch a shared module that imports a
pipeline (a copy of the package with one such import added)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """lint-imports on the package under `root` (its pyproject.toml's contracts, its copy of vehicle_ray)."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": str(LINT_IMPORTS.parent)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tree_keeps_its_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_top_level_module_has_a_layer():
    layers, forbidden = contracts()
    placed = {m.strip() for layer in layers["layers"] for m in layer.replace("|", ":").split(":")}
    placed |= set(forbidden["source_modules"])
    modules = {f"vehicle_ray.{p.stem}" for p in (ROOT / "vehicle_ray").glob("*.py") if p.stem != "__init__"}
    modules |= {f"vehicle_ray.{p.name}" for p in (ROOT / "vehicle_ray").iterdir() if (p / "__init__.py").is_file()}
    assert modules - placed == set(), "place new modules in pyproject.toml's [tool.importlinter] contracts"


@pytest.mark.parametrize(
    "module, line",
    [("data.py", "import vehicle_ray.train.driver"), ("score/listing.py", "import vehicle_ray.train.loop")],
)
def test_an_upward_or_sideways_import_breaks_the_contract(tmp_path, module, line):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(ROOT / "vehicle_ray", tmp_path / "vehicle_ray", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "vehicle_ray" / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = lint_imports(tmp_path)
    importer = "vehicle_ray." + module.removesuffix(".py").replace("/", ".")
    assert result.returncode != 0, result.stdout + result.stderr
    assert f"{importer} -> {line.split()[1]}" in result.stdout


@pytest.mark.parametrize("package", ["", "score", "train", "report"])
def test_each_package_map_names_every_module(package):
    """The package docstrings are the map a new maintainer reads first: each names all its modules."""
    directory = ROOT / "vehicle_ray" / package
    text = (directory / "__init__.py").read_text()
    missing = [p.name for p in directory.glob("*.py") if p.name != "__init__.py" and p.name not in text]
    assert missing == [], f"{directory.relative_to(ROOT)}/__init__.py does not name {missing}"
