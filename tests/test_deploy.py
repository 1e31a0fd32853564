"""The deployment as shipped, read without a cluster: every deploy/*.yaml is valid against KubeRay's own
CRDs (vendored in tests/data/kuberay-crds/) and means what its job needs (an autoscaler where a group can
start at 0 or grow, a memory-backed /dev/shm that holds the object store and the DataLoader's batches,
pods that can place the entrypoint's workers and actors, scoring reads the model training publishes);
cluster.yaml and the Dockerfile install what `score --model models:/...` needs.

The entrypoints are parsed by the real click commands, so a renamed flag fails here, and the sizes come
from the real code (cpus_per_worker, worker_hardware, plan_resources, read_ahead_bytes)."""

from __future__ import annotations

import gzip
import inspect
import re
import shlex
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from vehicle_ray.cli import build_recipe, cli
from vehicle_ray.recipe import Recipe, global_batch, per_worker_batch
from vehicle_ray.score.options import ScoreOptions, parse_actors
from vehicle_ray.score.planning import Plan, plan_resources, read_ahead_bytes
from vehicle_ray.train.config import TrainOptions
from vehicle_ray.train.driver import cpus_per_worker
from vehicle_ray.train.hardware import loader_batch_bytes, loader_shm_bytes, worker_hardware

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
CRDS = DATA / "kuberay-crds"
BEFORE = DATA / "deploy-before-issue-24"  # the manifests as shipped before issue 24: valid, but they never ran
MANIFESTS = sorted((ROOT / "deploy").glob("*.yaml"))
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are 2 MB of YAML
GIB = 2**30

TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
}
QUANTITY_UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
QUANTITY_UNITS.update({"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60})


def schema_errors(value: Any, schema: dict, path: str = "") -> list[str]:
    """`value`'s departures from an openAPIV3Schema as the API server's strict field validation finds them:
    an object that lists `properties` is closed unless it says `x-kubernetes-preserve-unknown-fields`, an
    `x-kubernetes-int-or-string` is an integer or a string. CEL rules (x-kubernetes-validations) are not
    evaluated here, so a field that has them is reported instead (no manifest uses one)."""
    if value is None and schema.get("nullable"):
        return []
    if schema.get("x-kubernetes-int-or-string"):
        if not (TYPES["integer"](value) or isinstance(value, str)):
            return [f"{path}: {value!r} is neither an integer nor a string"]
    elif "type" in schema and not TYPES[schema["type"]](value):
        return [f"{path}: {value!r} is not of type {schema['type']}"]
    errors = []
    if "x-kubernetes-validations" in schema:
        errors.append(f"{path}: has CEL rules (x-kubernetes-validations) that this test does not evaluate")
    if "anyOf" in schema and all(schema_errors(value, option, path) for option in schema["anyOf"]):
        errors.append(f"{path}: {value!r} matches none of {schema['anyOf']}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            errors.append(f"{path}: {value!r} has a length outside the schema's bounds")
    if TYPES["number"](value) and value < schema.get("minimum", value):
        errors.append(f"{path}: {value!r} is below the minimum {schema['minimum']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0):
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        for i, item in enumerate(value):
            errors += schema_errors(item, schema.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict):
        fields, extra = schema.get("properties", {}), schema.get("additionalProperties")
        errors += [
            f"{path}: required field {key!r} is missing" for key in schema.get("required", []) if key not in value
        ]
        for key, item in value.items():
            if key in fields:
                errors += schema_errors(item, fields[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                errors += schema_errors(item, extra, f"{path}.{key}")
            elif fields and extra is not True and not schema.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{path}.{key}: unknown field")
    return errors


@cache
def crds() -> dict[str, dict]:
    """KubeRay's CustomResourceDefinitions, by the kind they define."""
    found = {}
    for path in CRDS.glob("*.yaml.gz"):
        with gzip.open(path, "rt") as f:
            found.update({crd["spec"]["names"]["kind"]: crd for crd in yaml.load_all(f, Loader=LOADER) if crd})
    return found


def served_schema(api_version: str, kind: str) -> dict:
    crd = crds()[kind]
    for version in crd["spec"]["versions"]:
        if f"{crd['spec']['group']}/{version['name']}" == api_version and version["served"]:
            return version["schema"]["openAPIV3Schema"]
    raise AssertionError(f"KubeRay serves no {kind} at {api_version}")


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("4", "500m", "16Gi", 2) as a plain number."""
    match = re.fullmatch(r"([0-9.]+(?:[eE][-+]?[0-9]+)?)([a-zA-Z]*)", str(value))
    assert match and match.group(2) in QUANTITY_UNITS, f"not a Kubernetes quantity: {value!r}"
    return float(match.group(1)) * QUANTITY_UNITS[match.group(2)]


@dataclass(frozen=True)
class Group:
    """One group's pods as Ray sees them (KubeRay's rules: rayStartParams first, then the first container's
    limits, then its requests)."""

    name: str
    replicas: int
    min_replicas: int
    max_replicas: int
    cpus: float
    gpus: float
    memory: float  # the memory limit, bytes
    object_store: float | None  # rayStartParams object-store-memory; None: Ray's own guess
    shm: float | None  # a memory-backed emptyDir at /dev/shm (no sizeLimit: the memory limit); None: 64 MB

    def as_node(self) -> dict[str, float]:
        return {"CPU": self.cpus, "GPU": self.gpus}

    def fits(self, bundle: dict[str, float]) -> int:
        """How many `bundle`s one pod places."""
        return int(min(self.as_node().get(k, 0) // v for k, v in bundle.items() if v > 0))


def ray_group(name: str, spec: dict, replicas: int, min_replicas: int, max_replicas: int) -> Group:
    pod = spec["template"]["spec"]
    container = pod["containers"][0]  # KubeRay runs Ray in the first container
    resources = container.get("resources", {})
    limits = {**resources.get("requests", {}), **resources.get("limits", {})}
    params = spec.get("rayStartParams", {})
    memory = quantity(limits.get("memory", 0))
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    shm = None
    for mount in container.get("volumeMounts", []):
        empty = volumes.get(mount["name"], {}).get("emptyDir", {})
        if mount["mountPath"] == "/dev/shm" and empty.get("medium") == "Memory":
            shm = quantity(empty.get("sizeLimit", memory))
    return Group(
        name=name,
        replicas=replicas,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cpus=quantity(params.get("num-cpus", limits.get("cpu", 0))),
        gpus=quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0))),
        memory=memory,
        object_store=quantity(params["object-store-memory"]) if "object-store-memory" in params else None,
        shm=shm,
    )


@dataclass(frozen=True)
class Job:
    file: str
    command: str  # the vehicle-ray subcommand the entrypoint runs
    params: dict[str, Any]  # its options, as the real click command parsed them
    cluster: dict  # rayClusterSpec
    head: Group
    workers: list[Group]


def parse_entrypoint(entrypoint: str) -> tuple[str, dict[str, Any]]:
    """`python /app/jobs/NAME.py ARGS` (the Dockerfile copies jobs/ to /app/jobs) as the job would parse it."""
    python, script, *args = shlex.split(entrypoint)
    assert python == "python" and Path(script).parent == Path("/app/jobs"), entrypoint
    command = Path(script).stem.replace("_", "-")
    return command, cli.commands[command].make_context(f"jobs/{Path(script).name}", args).params


def load_jobs(directory: Path) -> list[Job]:
    jobs = []
    for path in sorted(directory.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        spec = doc["spec"]["jobTemplate"] if doc["kind"] == "RayCronJob" else doc["spec"]
        cluster = spec["rayClusterSpec"]
        command, params = parse_entrypoint(spec["entrypoint"])
        groups = [
            ray_group(g["groupName"], g, g.get("replicas", g["minReplicas"]), g["minReplicas"], g["maxReplicas"])
            for g in cluster.get("workerGroupSpecs", [])
        ]
        jobs.append(
            Job(path.name, command, params, cluster, ray_group("head", cluster["headGroupSpec"], 1, 1, 1), groups)
        )
    return jobs


def recipe_of(params: dict[str, Any]) -> Recipe:
    """The recipe `train` builds from its parsed options (the ones its callback does not name are recipe flags)."""
    named = set(inspect.signature(cli.commands["train"].callback).parameters)
    flags = {k: v for k, v in params.items() if k not in named}
    flags["bs"] = global_batch(flags["bs"], params["bs_per_worker"], params["workers"])
    return build_recipe(**flags)[0]


def train_options(params: dict[str, Any]) -> TrainOptions:
    return TrainOptions(
        csv=params["csv_path"],
        images=params["images"],
        out=params["out"],
        workers=params["workers"],
        use_gpu=params["use_gpu"],
        cpus_per_worker=params["cpus_per_worker"],
        loader_workers=params["loader_workers"],
    )


def score_plan(params: dict[str, Any]) -> Plan:
    """The actor pool `score` plans on a fresh autoscaling cluster (nothing up yet)."""
    low, high = parse_actors(params["actors"])
    opts = ScoreOptions(
        actors=low,
        max_actors=high,
        cpus_per_actor=params["cpus_per_actor"],
        gpus_per_actor=params["gpus_per_actor"],
        batch_size=params["batch_size"],
    )
    return plan_resources({}, opts, elastic=True)


def autoscaling_problems(job: Job) -> list[str]:
    """A group that can start at 0 or range in size needs the autoscaler; the head takes no work."""
    autoscaled = job.cluster.get("enableInTreeAutoscaling") is True
    problems = []
    for g in job.workers:
        if not g.min_replicas <= g.replicas <= g.max_replicas:
            problems.append(f"group {g.name}: replicas {g.replicas} outside {g.min_replicas}..{g.max_replicas}")
        if (g.replicas == 0 or g.min_replicas < g.max_replicas) and not autoscaled:
            problems.append(
                f"group {g.name} can start at {g.replicas} and range over {g.min_replicas}..{g.max_replicas} "
                "replicas, but enableInTreeAutoscaling is not true: KubeRay adds no autoscaler and keeps it at replicas"
            )
    if job.head.cpus != 0:
        problems.append(f'the head has {job.head.cpus:g} CPUs for Ray: rayStartParams num-cpus "0" keeps work off it')
    return problems


def shm_problems(g: Group, loader_bytes: float = 0) -> list[str]:
    """/dev/shm holds Ray's object store (Ray 2.60 puts it on disk when /dev/shm is smaller) and, on training
    pods, the DataLoader's batches (`loader_bytes`); its pages count against the pod's memory limit."""
    problems = []
    if g.object_store is None:
        problems.append(f"group {g.name}: no rayStartParams object-store-memory: Ray guesses 30% of memory")
    if g.shm is None:
        problems.append(f"group {g.name}: no memory-backed emptyDir at /dev/shm: the container runtime gives 64 MB")
    if problems:
        return problems
    need = g.object_store + loader_bytes
    if g.shm < need:
        problems.append(
            f"group {g.name}: /dev/shm sizeLimit {g.shm / GIB:.2f} GiB < {need / GIB:.2f} GiB "
            f"(object store {g.object_store / GIB:.2f} GiB + DataLoader {loader_bytes / GIB:.2f} GiB)"
        )
    if g.shm > g.memory / 2:
        problems.append(
            f"group {g.name}: /dev/shm may take {g.shm / GIB:.1f} GiB of the {g.memory / GIB:.1f} GiB memory limit"
        )
    return problems


def train_problems(job: Job) -> list[str]:
    opts, recipe = train_options(job.params), recipe_of(job.params)
    groups = [g for g in job.workers if g.gpus >= 1] if opts.use_gpu else job.workers
    problems = []
    loader = {g.name: 0.0 for g in groups}
    up = [g.as_node() for g in groups for _ in range(g.max_replicas)]
    for cpus in sorted({cpus_per_worker(opts, []), cpus_per_worker(opts, up)}):  # before and after the pods are up
        bundle = {"CPU": cpus, "GPU": 1.0} if opts.use_gpu else {"CPU": cpus}
        places = sum(g.max_replicas * g.fits(bundle) for g in groups)
        if places < opts.workers:
            problems.append(f"--workers {opts.workers} x {bundle}: the groups' maxReplicas place {places}")
        capability = (8, 0) if opts.use_gpu else None
        hardware = worker_hardware(opts.use_gpu, max(1, int(cpus)), capability, opts.loader_workers)
        worker_bs = per_worker_batch(recipe.bs, opts.workers)
        batches = loader_shm_bytes(hardware.loader_workers, loader_batch_bytes(worker_bs, recipe.size))
        for g in groups:
            loader[g.name] = max(loader[g.name], g.fits(bundle) * batches)
    return problems + [p for g in [job.head, *job.workers] for p in shm_problems(g, loader.get(g.name, 0))]


def score_problems(job: Job, published: dict[str, Job]) -> list[str]:
    plan, params = score_plan(job.params), job.params
    bundle = {"CPU": plan.cpus_per_actor, "GPU": plan.gpus_per_actor}
    places = sum(g.max_replicas * g.fits(bundle) for g in job.workers)
    problems = []
    if places < (plan.max_actors or 1):
        problems.append(f"--actors {params['actors']} x {bundle}: the groups' maxReplicas place {places} actors")
    training = published.get(params["model"])
    if training is None:
        problems.append(f"--model {params['model']} is not what a training manifest publishes ({sorted(published)})")
    else:
        read_ahead = read_ahead_bytes(plan, recipe_of(training.params).size, params["batch_size"]) or 0
        problems += [
            f"group {g.name}: object store {g.object_store / GIB:.2f} GiB < the read-ahead {read_ahead / GIB:.2f} GiB"
            for g in job.workers
            if g.object_store is not None and g.object_store < read_ahead
        ]
    return problems + [p for g in [job.head, *job.workers] for p in shm_problems(g)]


def problems_of(jobs: list[Job]) -> list[str]:
    """Everything the jobs' settings say that would not run as meant, one line each."""
    published = {job.params["out"]: job for job in jobs if job.command == "train"}
    found = []
    for job in jobs:
        meaning = train_problems(job) if job.command == "train" else score_problems(job, published)
        found += [f"{job.file}: {p}" for p in autoscaling_problems(job) + meaning]
    return found


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_against_kuberays_crd(path):
    doc = yaml.safe_load(path.read_text())
    assert schema_errors(doc, served_schema(doc["apiVersion"], doc["kind"])) == []


def test_the_schema_check_refuses_unknown_fields_wrong_types_and_bad_quantities():
    doc = yaml.safe_load((ROOT / "deploy" / "raycronjob-score.yaml").read_text())
    cluster = doc["spec"]["jobTemplate"]["rayClusterSpec"]
    cluster["enableInTreeAutoscalling"] = True
    gpu = cluster["workerGroupSpecs"][0]
    gpu["replicas"] = "two"
    gpu["template"]["spec"]["volumes"][0]["emptyDir"]["sizeLimit"] = "5 GB"
    errors = schema_errors(doc, served_schema(doc["apiVersion"], doc["kind"]))
    assert len(errors) == 3, errors
    prefix = ".spec.jobTemplate.rayClusterSpec"
    assert f"{prefix}.enableInTreeAutoscalling: unknown field" in errors
    assert f"{prefix}.workerGroupSpecs[0].replicas: 'two' is not of type integer" in errors
    size_limit = f"{prefix}.workerGroupSpecs[0].template.spec.volumes[0].emptyDir.sizeLimit: '5 GB' does not match"
    assert any(e.startswith(size_limit) for e in errors), errors


def test_manifests_mean_what_their_jobs_need():
    jobs = load_jobs(ROOT / "deploy")
    assert sorted(job.command for job in jobs) == ["score", "train"]
    assert problems_of(jobs) == []


def test_the_manifests_shipped_before_issue_24_are_valid_but_refused_for_what_they_mean():
    for path in sorted(BEFORE.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        assert schema_errors(doc, served_schema(doc["apiVersion"], doc["kind"])) == []
    found = problems_of(load_jobs(BEFORE))
    nightly = [p for p in found if p.startswith("raycronjob-score.yaml: ")]
    assert any("group gpu can start at 0" in p and "enableInTreeAutoscaling is not true" in p for p in nightly), found
    assert any("group gpu: no memory-backed emptyDir at /dev/shm" in p for p in nightly), found
    assert any("--model s3://models/vehicle is not what a training manifest publishes" in p for p in nightly), found
    assert any(p.startswith("rayjob-train.yaml: group gpu can start at 2") for p in found), found


def test_cluster_yaml_has_a_cpu_head_gpu_workers_training_fits_and_the_mlflow_extra():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    gpu_nodes = [t["resources"] for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_nodes and all(t["min_workers"] == 0 for t in types.values() if t["resources"].get("GPU"))
    opts = TrainOptions(csv="c", images="i", out="o", use_gpu=True)
    for node in gpu_nodes:
        assert max(cpus_per_worker(opts, []), cpus_per_worker(opts, [node])) <= node["CPU"] / node["GPU"]
    assert any(re.search(r"pip install .*vehicle_ray\[mlflow\]", command) for command in config["setup_commands"])


def test_the_image_installs_the_mlflow_extra():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "mlflow" in pyproject["project"]["optional-dependencies"]
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    installs = [line for line in dockerfile.splitlines() if line.startswith("RUN ") and "pip install" in line]
    assert any(re.search(r"pip install [^&]*vehicle_ray[^&]*\[mlflow\]", line) for line in installs), installs
