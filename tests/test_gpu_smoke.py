"""bench/gpu_smoke.sh cannot rot before the first GPU day (issue #26): its rehearsal runs every step's
commands and Python on this machine's CPU, and the verdicts it draws from nvidia-smi samples are
unit-tested here, including the container case where nvidia-smi lists no process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_smoke.sh"


def _load_gpu_samples():
    """bench/ is scripts, not a package: load the file as module `gpu_samples` (registered first, as
    dataclasses look their module up in sys.modules)."""
    spec = importlib.util.spec_from_file_location("gpu_samples", ROOT / "bench" / "gpu_samples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gs = _load_gpu_samples()


def samples(*lines: str) -> list:
    return gs.parse(list(lines))


def test_a_cut_short_line_is_dropped_and_na_fields_stay_unknown():
    got = samples("45 1200 1", "[N/A] [N/A] 0", "12 30")
    assert got == [gs.Sample(45, 1200, 1), gs.Sample(None, None, 0)]


def test_utilisation_counts_the_samples_where_the_step_listed_a_process():
    status, verdict = gs.utilisation(samples("0 5 0", "80 900 1", "90 900 1", "0 900 0"))
    assert status == gs.PASS and verdict.startswith("GPU utilisation: median 85%, p90 80% (2 samples)")


def test_in_a_container_memory_says_when_the_step_held_the_gpu():
    """nvidia-smi lists no compute process there: the samples whose memory rose above the first count."""
    status, verdict = gs.utilisation(samples("0 5 0", "3 40 0", "70 900 0", "90 950 0"))
    assert status == gs.PASS and "median 80%" in verdict and "(2 samples)" in verdict


def test_utilisation_fails_when_memory_shows_the_gpu_never_used_and_skips_when_nothing_shows():
    assert gs.utilisation(samples("0 5 0", "0 6 0"))[0] == gs.FAIL
    status, verdict = gs.utilisation(samples("0 [N/A] 0", "0 [N/A] 0"))
    assert status == gs.NOT_OBSERVED and "no compute process" in verdict
    assert gs.utilisation([])[0] == gs.NOT_OBSERVED


def test_a_cpu_step_fails_on_a_listed_process_or_a_cuda_contexts_worth_of_memory():
    assert gs.stayed_off(samples("0 5 0", "0 5 1"))[0] == gs.FAIL
    status, verdict = gs.stayed_off(samples("0 5 0", "0 420 0"))  # a container: no process listed
    assert status == gs.FAIL and "grew by 415 MiB" in verdict
    status, verdict = gs.stayed_off(samples("0 5 0", "0 9 0"))
    assert status == gs.PASS and "within 4 MiB" in verdict


def test_a_cpu_step_is_skipped_not_passed_when_nvidia_smi_cannot_see_it():
    """Before issue #26 an empty process list passed this check in any container, proving nothing."""
    assert gs.stayed_off(samples("0 [N/A] 0", "0 [N/A] 0"))[0] == gs.NOT_OBSERVED
    status, verdict = gs.stayed_off([])
    assert status == gs.NOT_OBSERVED and "cannot be observed" in verdict


def test_the_samples_cli_prints_the_verdict_and_exits_with_its_status(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("0 5 0\n0 420 0\n")
    assert gs.main(["gpu_samples.py", "stayed-off", str(path)]) == gs.FAIL
    assert gs.main(["gpu_samples.py", "utilisation", str(tmp_path / "none.txt")]) == gs.NOT_OBSERVED
    assert gs.main(["gpu_samples.py", "nonsense"]) == 2


def test_the_script_parses_and_refuses_unknown_arguments():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    r = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "unknown argument: --dry-run" in r.stderr


def summary_rows(stdout: str) -> dict[str, tuple[str, str]]:
    """The summary table: step -> (PASS/FAIL/SKIP, note)."""
    table = stdout.split("== summary", 1)[1].splitlines()[1:]
    rows = {}
    for line in table:
        fields = line.split(maxsplit=3)
        if len(fields) >= 3:
            rows[fields[0]] = (fields[1], fields[3] if len(fields) == 4 else "")
    return rows


# Every step the GPU run has. On a CPU box the GPU-only facts are SKIPs with their reason; score_g0.5 would
# be score_g1's command again. On a machine with a GPU those may PASS instead.
REHEARSED = {
    "data",
    "weights",
    "train",
    "onnx_gpu",
    "forward",
    "probe",
    "score_g1",
    "score_g0",
    "score_pickle",
    "train_nccl",
}
GPU_FACTS = {"gpu", "train_cpu", "train_util"}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_rehearsal_runs_every_step_of_the_gpu_smoke_on_the_cpu(tmp_path):
    work = tmp_path / "smoke"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "CUDA_VISIBLE_DEVICES")}
    r = subprocess.run(
        ["bash", str(SCRIPT), "--rehearse", "--work", str(work)],
        capture_output=True,
        text=True,
        timeout=840,
        cwd=ROOT,
        env=env,
    )
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted((work / "logs").glob("*.log")))
    assert r.returncode == 0, f"{r.stdout[-4000:]}\n{r.stderr[-2000:]}\n{logs[-8000:]}"
    rows = summary_rows(r.stdout)
    assert set(rows) == REHEARSED | GPU_FACTS | {"score_g0.5"}, r.stdout
    assert {name for name, (status, _) in rows.items() if status == "PASS"} >= REHEARSED, r.stdout
    for name in GPU_FACTS:  # PASS on a GPU machine; a SKIP always says why
        status, note = rows[name]
        assert status == "PASS" or (status == "SKIP" and "cannot be observed" in note), (name, status, note)
    assert rows["score_g0.5"] == ("SKIP", "rehearsed by score_g1: on the CPU both run --gpus-per-actor 0")

    # the probe built both models' Predictor in a CPU actor that never initialised CUDA
    probe = (work / "logs" / "probe.log").read_text()
    assert "ok artifact num_gpus=0:" in probe and "ok pickle num_gpus=0:" in probe
    # every scoring step went through Ray's actors (a listing this small would run in-process by default)
    for out in ("score_g1", "score_g0", "score_pickle"):
        summary = json.loads((work / out / "summary.json").read_text())
        assert summary["resources"]["in_process"] is False and summary["scored"] == 16, out
    assert json.loads((work / "model_nccl" / "model.json").read_text())["arch"] == "resnet18"
