"""Planning a scoring run (score/planning.py): pure functions of resources and options, no Ray.

The invariant that matters most: on the fixed (embedded) cluster the actor pool never reserves every
CPU, because Ray Data's decode tasks would then wait forever (a deadlock, not an error).
"""

import pytest

from tests.score.specs import model_spec
from vehicle_ray.errors import InputError
from vehicle_ray.score.options import ScoreOptions
from vehicle_ray.score.planning import (
    MIN_READ_AHEAD_BYTES,
    in_process_plan,
    plan_resources,
    read_ahead_bytes,
    tta_settings,
)


@pytest.mark.parametrize("total", [1, 2, 3, 4, 5, 7, 8, 16, 64, 96])
def test_default_plan_leaves_a_cpu_for_decoding(total):
    """Default sizing: actors x CPUs <= total - 1, or a clear InputError when no plan can fit."""
    try:
        plan = plan_resources({"CPU": float(total)}, ScoreOptions())
    except InputError as exc:
        assert total < 2, f"a {total}-CPU cluster can score: {exc}"
        assert "leaves no CPU" in str(exc)
        return
    assert plan.actors >= 1 and plan.cpus_per_actor >= 1
    assert plan.actors * plan.cpus_per_actor <= total - 1
    assert 1 <= plan.threads and plan.actors * plan.threads <= total  # threads never oversubscribe the node


@pytest.mark.parametrize("total", [2, 3, 4, 8, 16])
def test_any_actor_count_below_the_cpu_count_fits_with_default_cpus(total):
    """--actors N alone (N < total): the default CPUs per actor shrink so that one CPU stays free."""
    for actors in range(1, total):
        plan = plan_resources({"CPU": float(total)}, ScoreOptions(actors=actors))
        assert plan.actors == actors
        assert plan.actors * plan.cpus_per_actor <= total - 1


@pytest.mark.parametrize(
    "total, actors, cpus",
    [
        (4, 4, None),
        (4, 2, 2.0),
        (4, None, 4.0),
        (4, 1, 3.5),
        (16, 8, 2.0),
        (2, 2, None),
        (8, 7, 1.5),
    ],
)
def test_explicit_sizes_that_take_every_cpu_are_refused(total, actors, cpus):
    with pytest.raises(InputError, match="leaves no CPU"):
        plan_resources({"CPU": float(total)}, ScoreOptions(actors=actors, cpus_per_actor=cpus))


@pytest.mark.parametrize("total, actors, cpus", [(4, 3, 1.0), (4, 1, 3.0), (16, 5, 3.0), (8, 7, 1.0)])
def test_explicit_sizes_just_below_the_limit_are_kept(total, actors, cpus):
    plan = plan_resources({"CPU": float(total)}, ScoreOptions(actors=actors, cpus_per_actor=cpus))
    assert (plan.actors, plan.cpus_per_actor, plan.threads) == (actors, cpus, int(cpus))


@pytest.mark.parametrize("gpus_per_actor, actors", [(1.0, 4), (0.5, 8), (2.0, 2), (4.0, 1)])
def test_gpu_actors_are_sized_from_the_gpus(gpus_per_actor, actors):
    plan = plan_resources({"CPU": 32.0, "GPU": 4.0}, ScoreOptions(gpus_per_actor=gpus_per_actor))
    assert (plan.actors, plan.gpus_per_actor, plan.cpus_per_actor) == (actors, gpus_per_actor, 1.0)
    assert plan.actors * plan.cpus_per_actor <= 31


@pytest.mark.parametrize("resources", [{"CPU": 16.0}, {"CPU": 16.0, "GPU": 0.0}, {"CPU": 16.0, "GPU": 0.5}])
def test_gpus_asked_for_but_not_there_is_bad_input(resources):
    with pytest.raises(InputError, match="GPU"):
        plan_resources(resources, ScoreOptions(gpus_per_actor=1))


def test_gpu_actors_still_leave_a_cpu():
    """4 GPU actors x 1 CPU on a 4-CPU node would starve decoding: refused, not deadlocked."""
    with pytest.raises(InputError, match="leaves no CPU"):
        plan_resources({"CPU": 4.0, "GPU": 4.0}, ScoreOptions(gpus_per_actor=1))


@pytest.mark.parametrize(
    "resources, gpus_per_actor",
    [
        ({"CPU": 16.0, "GPU": 1.0}, 1.0),
        ({"CPU": 16.0, "GPU": 1.0}, 0.5),
        ({"CPU": 4.0, "GPU": 1.0}, 1.0),
        ({"CPU": 96.0, "GPU": 8.0}, 1.0),
        ({"CPU": 32.0, "GPU": 4.0}, 2.0),
    ],
)
def test_gpu_plans_never_run_more_busy_threads_than_cpus(resources, gpus_per_actor):
    """Issue #26: next to GPU actors every decode task (one busy Pillow thread) asks for a whole CPU, and
    each actor runs its own CPUs' worth of torch threads, not the node's: the actors' threads plus the
    decode tasks Ray can place beside them at once never exceed the CPUs (a 16-CPU 1-GPU node: 1 + 15)."""
    plan = plan_resources(resources, ScoreOptions(gpus_per_actor=gpus_per_actor))
    assert plan.decode_cpus == 1.0 and plan.threads == int(plan.cpus_per_actor) == 1
    decodes_at_once = (resources["CPU"] - plan.actors * plan.cpus_per_actor) // plan.decode_cpus
    assert decodes_at_once >= 1
    assert plan.actors * plan.threads + decodes_at_once <= resources["CPU"]


def test_gpu_plans_on_a_cluster_we_joined_decode_on_whole_cpus_too():
    plan = plan_resources({"CPU": 0.0}, ScoreOptions(gpus_per_actor=1), elastic=True)
    assert (plan.decode_cpus, plan.threads, plan.cpus_per_actor) == (1.0, 1, 1.0)


def test_cpu_plans_decode_on_half_cpus_beside_actors_using_the_node():
    """CPU actors keep decode at half a CPU (a request equal to the actors' would let Ray Data fuse the
    two operators) and their threads cover the node, as measured for CPU scoring."""
    plan = plan_resources({"CPU": 16.0}, ScoreOptions())
    assert plan.decode_cpus == 0.5 and plan.decode_cpus != plan.cpus_per_actor
    assert plan.threads == 16 // plan.actors > plan.cpus_per_actor


def test_explicit_cpus_per_actor_is_the_thread_count():
    assert plan_resources({"CPU": 16.0}, ScoreOptions(cpus_per_actor=3)).threads == 3


def test_fractional_cpus_per_actor_still_gets_a_thread():
    assert plan_resources({"CPU": 4.0}, ScoreOptions(cpus_per_actor=0.5)).threads >= 1


def test_read_ahead_has_a_floor_and_grows_with_actors_and_size():
    small = plan_resources({"CPU": 8.0}, ScoreOptions())  # 1 actor
    large = plan_resources({"CPU": 64.0}, ScoreOptions())  # 12 actors
    assert large.actors > small.actors
    assert read_ahead_bytes(small, 16, 1) == MIN_READ_AHEAD_BYTES
    assert read_ahead_bytes(large, 299, 64) > read_ahead_bytes(small, 299, 64) >= MIN_READ_AHEAD_BYTES
    assert read_ahead_bytes(small, 512, 64) > MIN_READ_AHEAD_BYTES  # one actor, big batches: above the floor
    assert read_ahead_bytes(large, 299, 64) > read_ahead_bytes(large, 224, 64)
    assert read_ahead_bytes(large, 299, 128) > read_ahead_bytes(large, 299, 64)
    # never so small that an actor cannot hold one decoded batch in flight
    assert read_ahead_bytes(large, 299, 64) >= large.actors * 64 * 299 * 299 * 3


def test_tta_comes_from_the_model_unless_overridden():
    """Zero is an override too (not "unset"): tta_beta=0.0 must not fall back to model.json's."""
    s = tta_settings(model_spec(n=6, beta=0.5), ScoreOptions())
    assert (s.n, s.beta, s.use_max) == (6, 0.5, False)
    s = tta_settings(model_spec(n=6, beta=0.5), ScoreOptions(tta_n=2, tta_beta=0.0, tta_max=True))
    assert (s.n, s.beta, s.use_max) == (2, 0.0, True)


def test_no_tta_is_the_plain_pass_only_whatever_else_is_asked():
    s = tta_settings(model_spec(has_int8=False), ScoreOptions(no_tta=True, tta_n=8, tta_precision="int8"))
    assert (s.n, s.beta, s.aug_precision, s.plain_precision) == (0, 1.0, "none", "fp32")


def test_a_model_whose_default_is_no_tta_runs_full_precision():
    s = tta_settings(model_spec(n=0), ScoreOptions())
    assert (s.n, s.aug_precision, s.plain_precision) == (0, "none", "fp32")


@pytest.mark.parametrize(
    "opts", [ScoreOptions(tta_precision="int8", gpus_per_actor=1), ScoreOptions(tta_precision="int8", backend="torch")]
)
def test_int8_is_refused_where_it_cannot_run(opts):
    with pytest.raises(InputError, match="int8"):
        tta_settings(model_spec(has_int8=True), opts)


def test_full_precision_on_gpu_is_bf16_even_with_an_int8_model():
    s = tta_settings(model_spec(has_int8=True), ScoreOptions(tta_precision="full", gpus_per_actor=1))
    assert (s.plain_precision, s.aug_precision) == ("bf16", "bf16")


@pytest.mark.parametrize(
    "files, opts, on_cluster, in_process",
    [
        (1000, ScoreOptions(), False, True),  # the default threshold, inclusive
        (1001, ScoreOptions(), False, False),
        (0, ScoreOptions(), False, True),  # nothing new tonight: no Ray for nothing
        (10, ScoreOptions(), True, False),  # RAY_ADDRESS, or Ray started by the caller
        (10, ScoreOptions(gpus_per_actor=1), False, False),  # GPU actors keep the cluster's GPU checks
        (10, ScoreOptions(in_process_up_to=0), False, False),  # 0: always Ray
        (5000, ScoreOptions(in_process_up_to=5000), False, True),
    ],
)
def test_only_small_runs_on_no_cluster_score_in_process(files, opts, on_cluster, in_process):
    plan = in_process_plan(files, opts, cpus=8, on_cluster=on_cluster)
    assert (plan is not None) == in_process
    if plan is not None:
        assert plan.in_process and plan.threads == 8 and plan.gpus_per_actor == 0
        assert "in this process" in plan.describe()
