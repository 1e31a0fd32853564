"""Starting on a cluster whose resources are not (yet) there: Ray Train's own wait, bounded by
--wait-for-resources (giving up is exit 69, try later); the CPU share when fewer CPUs than workers are up."""

import time

import pytest
from click.testing import CliRunner

from tests.conftest import our_stderr, run_cli
from vehicle_ray.cli import Group
from vehicle_ray.errors import EXIT_UNAVAILABLE, ResourcesUnavailable
from vehicle_ray.train.config import TrainOptions
from vehicle_ray.train.driver import cpus_per_worker


def test_cpus_per_worker_does_not_follow_what_happens_to_be_up():
    opts = TrainOptions(csv="t.csv", images="i", out="o", workers=4)
    assert cpus_per_worker(opts, [{"CPU": 16}]) == 4  # a share of a cluster that is up
    assert cpus_per_worker(opts, []) == 1  # a fresh autoscaling cluster reports no CPU at all
    assert cpus_per_worker(opts, [{"CPU": 2}]) == 1
    assert cpus_per_worker(TrainOptions(csv="t.csv", images="i", out="o", cpus_per_worker=3), []) == 3


def test_giving_up_on_resources_is_one_line_and_exit_69_from_any_command():
    group = Group()

    @group.command()
    def wait() -> None:
        raise ResourcesUnavailable("no model actor could start within 5s")

    result = CliRunner().invoke(group, ["wait"])
    assert result.exit_code == EXIT_UNAVAILABLE == 69  # EX_UNAVAILABLE: not 2, which schedules never retry
    assert result.stderr == "Unavailable: no model actor could start within 5s\n"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_gpu_on_a_cpu_cluster_waits_then_fails_naming_gpu(tmp_path):
    from vehicle_ray.sample_data import write_sample_data

    write_sample_data(tmp_path / "data", train=20, test=0, size=32, seed=1)
    t0 = time.monotonic()
    r = run_cli(
        "train",
        "--csv",
        str(tmp_path / "data" / "train.csv"),
        "--images",
        str(tmp_path / "data" / "images"),
        "--config",
        "tiny_cpu",
        "--gpu",
        "--workers",
        "2",
        "--wait-for-resources",
        "5",
        "--storage-path",
        str(tmp_path / "runs"),
        "--out",
        str(tmp_path / "m"),
        timeout=240,
    )
    elapsed = time.monotonic() - t0
    assert r.returncode == 69, (r.stdout + r.stderr)[-3000:]  # EX_UNAVAILABLE: a schedule tries again later
    stderr = our_stderr(r.stderr)
    # no GPU node to size the workers' CPUs from: the documented default of 3 CPUs per GPU worker
    assert "waiting for resources: 2 workers x {CPU: 3, GPU: 1} (cluster has {CPU: 2, GPU: 0}); up to 5s" in r.stdout
    assert stderr.startswith("Unavailable: gave up waiting for resources after 5s (--wait-for-resources): "), r.stderr
    assert "need CPU 6, GPU 2" in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert 4 <= elapsed <= 90, elapsed
    assert not (tmp_path / "m").exists()
