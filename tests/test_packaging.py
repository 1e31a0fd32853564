"""End-to-end install check: a NON-editable wheel of vehicle_ray works on its own.

The editable install used for development reads everything from the checkout, so it cannot notice
files that a wheel would leave out (the bundled recipes under vehicle_ray/configs/ are package data,
read with importlib.resources). This test builds a wheel from a copy of the sources, installs it with
--no-deps into a fresh venv and makes the development venv's dependencies visible through a plain
path line in a .pth file. Python adds that directory to sys.path but does not run the .pth files
inside it, so the development venv's editable finder for the checkout stays inactive and
`import vehicle_ray` can only come from the wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[1]
BUNDLED = ("tiny_cpu", "emergency_vehicles")


def _run(cmd: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """Build the wheel, install it into a fresh venv; returns the wheel, the venv and an outside cwd."""
    root = tmp_path_factory.mktemp("packaging")
    # Build from a copy so the checkout gets no build/ or egg-info churn from the test.
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(
        REPO / "vehicle_ray", src / "vehicle_ray", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    dist = root / "dist"
    _ok(
        _run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", dist, src],
            cwd=root,
        )
    )
    (wheel,) = dist.glob("vehicle_ray-*.whl")

    fresh = root / "fresh"
    _ok(_run([sys.executable, "-m", "venv", "--without-pip", fresh], cwd=root))
    python = fresh / "bin" / "python"
    _ok(_run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel], cwd=root))

    # The dependencies come from the venv running these tests, as a plain sys.path entry.
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    fresh_site = Path(_ok(_run([python, "-c", purelib], cwd=root)).stdout.strip())
    dep_dirs = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
    (fresh_site / "zz_vehicle_ray_test_deps.pth").write_text("".join(f"{d}\n" for d in dep_dirs))

    outside = root / "cwd"
    outside.mkdir()
    return {"wheel": wheel, "venv": fresh, "python": python, "cwd": outside}


def test_wheel_contains_bundled_recipes(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    missing = [f"vehicle_ray/configs/{n}.toml" for n in BUNDLED if f"vehicle_ray/configs/{n}.toml" not in names]
    assert not missing, f"wheel lacks package data {missing}"
    assert "vehicle_ray/report/templates/review.html" in names, "wheel lacks the review page template"


def test_import_comes_from_the_wheel(installed):
    code = "import vehicle_ray, vehicle_ray.recipe as r; print(vehicle_ray.__file__); print(*r.bundled_recipes())"
    out = _ok(_run([installed["python"], "-c", code], cwd=installed["cwd"])).stdout.splitlines()
    where = Path(out[0]).resolve()
    assert where.is_relative_to(installed["venv"].resolve()), f"vehicle_ray imported from {where}"
    assert not where.is_relative_to(REPO), f"vehicle_ray imported from the checkout: {where}"
    assert set(BUNDLED) <= set(out[1].split())


def test_console_script_help(installed):
    proc = _ok(_run([installed["venv"] / "bin" / "vehicle-ray", "--help"], cwd=installed["cwd"]))
    assert "train" in proc.stdout


def test_bundled_recipe_loads_from_the_wheel(installed):
    """`--config tiny_cpu` resolves inside the installed package; the run then stops on the bad data."""
    cwd = installed["cwd"]
    csv = cwd / "train.csv"
    csv.write_text("image_names,emergency_or_not\na.jpg,1\nb.jpg,0\n")
    cmd = [installed["venv"] / "bin" / "vehicle-ray", "train", "--config", "tiny_cpu", "--csv", csv]
    proc = _run([*cmd, "--images", cwd / "no_such_images", "--out", cwd / "model"], cwd=cwd)
    err = proc.stderr.strip()
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "recipe" not in err.lower(), err
    assert len(err.splitlines()) == 1 and "image" in err.lower(), err
