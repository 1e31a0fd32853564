"""Import hygiene, checked in fresh interpreters (this test process has imported everything already).

* The CLI, the drivers and what the Ray Train controller unpickles stay free of torch and fastai
  (seconds of imports on every `vehicle-ray --help`, driver and controller).
* No import cycle: every module of the package imports on its own, whatever was imported before.
"""

import subprocess
import sys

import pytest

# Fresh interpreters importing torch, fastai and ray: 14 s, a fifth of `make test-fast`; CI runs them.
pytestmark = pytest.mark.slow

LIGHT = [
    "vehicle_ray.cli",
    "vehicle_ray.score.driver",
    "vehicle_ray.train.driver",
    "vehicle_ray.train.config",
    "vehicle_ray.train.launch",
]
HEAVY = ("torch", "fastai")

EVERY = "every module"
EVERY_MODULE = """
import importlib, pkgutil, sys, traceback
import vehicle_ray

names = sorted(m.name for m in pkgutil.walk_packages(vehicle_ray.__path__, "vehicle_ray."))
failed = []
for name in names:
    for loaded in [m for m in sys.modules if m == "vehicle_ray" or m.startswith("vehicle_ray.")]:
        del sys.modules[loaded]  # each module starts from a fresh package; third-party imports stay cached
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc().strip().splitlines()[-1])
print(len(names))
print("\\n".join(failed))
"""


LIGHT_CHECK = f"""
import importlib, sys
for module in {LIGHT!r}:  # in turn: the first one that loads torch or fastai is the one named
    importlib.import_module(module)
    print(module, ",".join(m for m in {HEAVY!r} if m in sys.modules))
"""


@pytest.fixture(scope="module")
def interpreters():
    """All the fresh interpreters of this file, started at once (mostly import time: they overlap)."""
    codes = {"light": LIGHT_CHECK, EVERY: EVERY_MODULE}
    procs = {
        name: subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, code in codes.items()
    }

    def result(name: str) -> subprocess.CompletedProcess:
        out, err = procs[name].communicate(timeout=300)
        return subprocess.CompletedProcess(procs[name].args, procs[name].returncode, out, err)

    yield result
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_light_modules_do_not_import_torch_or_fastai(interpreters):
    result = interpreters("light")
    assert result.returncode == 0, result.stderr
    loaded = dict(line.partition(" ")[::2] for line in result.stdout.strip().splitlines())
    assert list(loaded) == LIGHT  # every module was checked
    assert loaded == dict.fromkeys(LIGHT, ""), f"torch/fastai loaded by: {loaded}"


def test_every_module_imports_on_its_own(interpreters):
    """One interpreter for all modules (fast): before each import every vehicle_ray module is dropped
    from sys.modules, so a cycle shows up whichever module of it is imported first."""
    result = interpreters(EVERY)
    assert result.returncode == 0, result.stderr
    count, *failed = result.stdout.strip().splitlines()
    assert int(count) >= 25  # the walk found the package (train/, score/, report/ and the shared modules)
    assert failed == [], "\n".join(failed)
