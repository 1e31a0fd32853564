"""Planning a scoring run on the driver: the actor pool's size, the actors' device and the model each
TTA pass runs on.

Pure functions of the cluster's resources, the options and the model's description: no Ray calls, so
the invariants (never reserve every CPU, GPU sizing, which passes may run int8, the device follows the
plan and never mere GPU visibility, bf16 or fp16 by GPU capability) are unit-tested.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from vehicle_ray import columns as col
from vehicle_ray.errors import InputError
from vehicle_ray.score.model import ModelSpec, require_backend_device
from vehicle_ray.score.options import ScoreOptions
from vehicle_ray.tta import TTASettings

# On the embedded single-node Ray, model actors leave a quarter of the CPUs (always at least one) to the
# read and decode tasks: with none left Ray Data cannot schedule a decode task and the pipeline waits
# forever (the 2-CPU deadlock DESIGN.md records).
DECODE_SHARE = 4
# CPUs (and ONNX Runtime threads) of each default CPU actor: fewer, wider actors load the model fewer
# times; --actors / --cpus-per-actor choose otherwise.
CPUS_PER_DEFAULT_ACTOR = 4

MIN_READ_AHEAD_BYTES = 256 * 2**20
# What a GPU plan asks for; an actor whose GPU lacks native bf16 (compute capability < 8.0: T4, V100)
# runs fp16 instead and records that in its rows (`ran_precisions`) and so in summary.json.
GPU_PRECISION = "bf16"
GPU_PRECISION_NOTE = "bf16 or fp16 by GPU capability"
READ_AHEAD_BATCHES = 8  # decoded batches per actor that may wait in the object store
# CPUs per decode task. Next to CPU actors, half a CPU: the request must differ from the actors' own or
# Ray Data fuses decoding into the actor (fusion needs equal remote args), and the actors' threads cover
# the node anyway. Next to GPU actors, a whole one: a decode task is one busy Python thread (Pillow), and
# at half a CPU a 16-CPU 1-GPU node would run 30 of them on the 15 CPUs beside the 1-CPU actor, starving
# its Python glue (issue #26); there num_gpus already keeps the two operators apart.
DECODE_CPUS_BESIDE_CPU_ACTORS = 0.5
DECODE_CPUS_BESIDE_GPU_ACTORS = 1.0


@dataclass(frozen=True)
class Plan:
    actors: int  # the pool's minimum (and its size when fixed)
    max_actors: int | None  # None: as many as the cluster's autoscaler can place
    cpus_per_actor: float
    gpus_per_actor: float
    threads: int
    in_process: bool = False  # a small local run: decode and model in the driver's process, no Ray
    decode_cpus: float = DECODE_CPUS_BESIDE_CPU_ACTORS  # each decode task's CPU request

    @property
    def fixed(self) -> bool:
        return self.max_actors == self.actors

    def describe(self) -> str:
        if self.in_process:
            return f"in this process, {self.threads} threads (no Ray: a small run on no cluster)"
        size = str(self.actors) if self.fixed else f"{self.actors}..{self.max_actors or 'autoscale'}"
        gpu = f" + {self.gpus_per_actor:g} GPU" if self.gpus_per_actor else ""
        return f"{size} actor(s) x {self.cpus_per_actor:g} CPU{gpu}, {self.threads} threads each"


def plan_resources(resources: dict[str, float], opts: ScoreOptions, elastic: bool = False) -> Plan:
    """Size the actor pool. On a fixed cluster (the embedded one) from its resources, always leaving
    CPU for the read/decode tasks: an actor pool that reserves every CPU deadlocks Ray Data (the decode
    tasks wait forever). On a cluster we joined (`elastic`: an autoscaler may add nodes) nothing is
    refused for what happens to be up at start: the pool starts at --actors MIN (default 1) and grows
    to MAX (default: as far as the autoscaler goes) as Ray Data asks the cluster for more."""
    total_cpu, total_gpu = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    fits_now = total_cpu >= 2 and (opts.gpus_per_actor == 0 or total_gpu >= opts.gpus_per_actor)
    if elastic and (not fits_now or opts.max_actors is not None):
        cpus = opts.cpus_per_actor or 1.0
        fixed_size = opts.actors if opts.max_actors is None else None  # --actors N stays a fixed pool
        return Plan(
            actors=opts.actors or 1,
            max_actors=opts.max_actors or fixed_size,
            cpus_per_actor=cpus,
            gpus_per_actor=opts.gpus_per_actor,
            threads=max(1, int(cpus)),
            decode_cpus=decode_cpus(opts),
        )
    if opts.gpus_per_actor > 0:
        if total_gpu < opts.gpus_per_actor:
            raise InputError(f"--gpus-per-actor {opts.gpus_per_actor:g} but the cluster has {total_gpu:g} GPUs")
        actors = opts.actors or max(1, int(total_gpu // opts.gpus_per_actor))
        cpus = opts.cpus_per_actor or 1.0
    else:
        reserve = max(1.0, total_cpu // DECODE_SHARE)
        actors = opts.actors or max(1, int((total_cpu - reserve) // CPUS_PER_DEFAULT_ACTOR))
        cpus = opts.cpus_per_actor or max(1.0, float((total_cpu - reserve) // actors))
    if actors * cpus > total_cpu - 1:
        raise InputError(
            f"{actors} actors x {cpus:g} CPUs leaves no CPU for reading and decoding on a "
            f"{total_cpu:g}-CPU cluster; lower --actors or --cpus-per-actor"
        )
    if opts.cpus_per_actor or opts.gpus_per_actor:
        # A GPU actor's CPU work is glue (batches onto the GPU, rows back): its own CPUs' worth of torch
        # threads, not the node's (16 on a 16-CPU node, competing with every decode task there).
        threads = max(1, int(cpus))
    else:
        threads = max(1, int(total_cpu // actors))
    return Plan(
        actors=actors,
        max_actors=actors,
        cpus_per_actor=cpus,
        gpus_per_actor=opts.gpus_per_actor,
        threads=threads,
        decode_cpus=decode_cpus(opts),
    )


def decode_cpus(opts: ScoreOptions) -> float:
    """Each decode task's CPU request: DECODE_CPUS_BESIDE_GPU_ACTORS on GPU plans, else the CPU plans' half."""
    return DECODE_CPUS_BESIDE_GPU_ACTORS if opts.gpus_per_actor else DECODE_CPUS_BESIDE_CPU_ACTORS


def in_process_plan(files: int, opts: ScoreOptions, cpus: int, on_cluster: bool) -> Plan | None:
    """The plan of a run scored in the driver's own process, or None for Ray: only for at most
    --in-process-up-to files to score (what the manifest holds after --incremental dropped the done
    ones), only on CPU (GPU actors keep Ray's checks of the cluster's GPUs) and only without a cluster
    (`on_cluster`: RAY_ADDRESS, or Ray already started by the caller)."""
    if on_cluster or opts.gpus_per_actor or files > opts.in_process_up_to:
        return None
    threads = max(1, cpus)
    return Plan(1, 1, float(threads), 0.0, threads, in_process=True)


def read_ahead_bytes(plan: Plan, size: int, batch_size: int) -> int | None:
    """Object-store cap for the pipeline. Decoding runs far ahead of the model (~50x on CPU), and
    uncapped Ray Data buffers decoded blocks up to its whole object-store budget, so memory would
    grow with the dump; a few batches per actor keep every actor fed. An unbounded (autoscaling) pool
    gets Ray Data's own budget, which grows with the cluster's object stores."""
    if plan.max_actors is None:
        return None
    return max(MIN_READ_AHEAD_BYTES, plan.max_actors * READ_AHEAD_BATCHES * batch_size * size * size * 3)


def actor_device(gpus_per_actor: float) -> str:
    """The model actors' device, from the plan alone: "cuda" when each actor reserves GPU, else "cpu".
    Never from what the actor can see: Ray 2.60 no longer hides a node's GPUs from actors that
    reserved none, so `torch.cuda.is_available()` is True in CPU actors on a GPU node."""
    return "cuda" if gpus_per_actor > 0 else "cpu"


def ran_precisions(tta: TTASettings, gpu: str) -> TTASettings:
    """`tta` as a GPU actor runs it: the planned GPU precision replaced by its GPU's own (`gpu_precision`)."""

    def ran(planned: str) -> str:
        return gpu if planned == GPU_PRECISION else planned

    return replace(tta, plain_precision=ran(tta.plain_precision), aug_precision=ran(tta.aug_precision))


def recorded_tta(tta: TTASettings, ran: dict[str, set[str]]) -> TTASettings:
    """The settings for summary.json: the precisions the actors recorded in their rows (columns
    tta_plain_precision / tta_aug_precision), joined with "+" when actors on different GPUs differed;
    the plan's when no row came back."""
    plain, aug = ran.get(col.TTA_PLAIN_PRECISION), ran.get(col.TTA_AUG_PRECISION)
    if not plain or not aug:
        return tta
    return replace(tta, plain_precision="+".join(sorted(plain)), aug_precision="+".join(sorted(aug)))


def describe_precisions(tta: TTASettings) -> str:
    """The passes' precisions for the driver's log line (a GPU plan's are chosen in each actor)."""
    if tta.aug_precision in ("none", tta.plain_precision):
        text = tta.plain_precision
    else:
        text = f"plain {tta.plain_precision}, augmented {tta.aug_precision}"
    return text.replace(GPU_PRECISION, GPU_PRECISION_NOTE)


def full_precision(opts: ScoreOptions) -> str:
    """The full-precision model's precision as planned: GPU_PRECISION on GPU actors (each actor then runs
    bf16 or fp16 by its GPU's capability, see `ran_precisions`), fp32 on CPU actors."""
    return GPU_PRECISION if actor_device(opts.gpus_per_actor) == "cuda" else "fp32"


def tta_settings(spec: ModelSpec, opts: ScoreOptions) -> TTASettings:
    """Which model each pass runs on; refuses (InputError, before any Ray work) what cannot run."""
    require_backend_device(opts.backend, actor_device(opts.gpus_per_actor) == "cuda")
    full = full_precision(opts)
    if opts.no_tta:
        return TTASettings(n=0, beta=1.0, use_max=False, aug_precision="none", plain_precision=full)
    d = spec.tta_defaults
    settings = TTASettings(
        n=d.n if opts.tta_n is None else opts.tta_n,
        beta=d.beta if opts.tta_beta is None else opts.tta_beta,
        use_max=opts.tta_max,
    )
    if settings.n == 0:
        return replace(settings, aug_precision="none", plain_precision=full)
    precision = tta_precision(spec, opts)
    # The plain pass stays at full precision where its probabilities are served on their own: adaptive
    # TTA's skipped rows (exactly what --no-tta serves) and evaluate's accuracy with TTA off.
    exact_plain = opts.emit_plain or opts.tta_mode == "adaptive"
    return replace(settings, aug_precision=precision, plain_precision=full if exact_plain else precision)


def tta_precision(spec: ModelSpec, opts: ScoreOptions) -> str:
    """What TTA's passes run on. auto: the artifact's int8 ONNX model on CPU actors (about twice as
    fast; TTA's blend moves less under int8 than under a different draw of its own augmentations),
    else full precision: bf16 or fp16 on GPU actors, fp32 on CPU. Without TTA the plain pass is always full."""
    int8_possible = spec.has_int8 and actor_device(opts.gpus_per_actor) == "cpu" and opts.backend != "torch"
    if opts.tta_precision == "int8" and not int8_possible:
        raise InputError(
            "--tta-precision int8 needs CPU actors, the ONNX backend and a model artifact with "
            "model.int8.onnx; use --tta-precision full"
        )
    return "int8" if int8_possible and opts.tta_precision != "full" else full_precision(opts)
