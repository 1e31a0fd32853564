"""`score --dry-run`: the checks a scoring run makes before it takes the lease, then what it would do.

It loads and verifies the model, lists the input and reads the output's history exactly as a run would,
but takes no lease, writes no manifest and starts no Ray. On no cluster the actor pool is planned from
this machine's CPUs as the embedded Ray would have them; a cluster's pool is sized when the run joins it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vehicle_ray.errors import InputError
from vehicle_ray.score.driver import check_history, list_input, prepare_model
from vehicle_ray.score.options import ScoreOptions
from vehicle_ray.score.planning import in_process_plan, plan_resources
from vehicle_ray.score.store import OutputStore


def scoring_plan(
    model: str | Path,
    source: str | Path,
    output: str | Path,
    images: str | Path | None,
    opts: ScoreOptions,
    allow_pickle: bool = False,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """The plan of `score` with these arguments: InputError (exit 2) for anything the run would refuse
    before scoring."""
    prepared = prepare_model(model, opts, allow_pickle, tracking_uri)
    spec, tta = prepared.spec, prepared.tta
    root, chunks, listing = list_input(source, images, output, opts)
    listed = sum(len(chunk) for chunk in chunks)
    runs = _finished_runs(output)
    check_history(output, bool(runs), opts)
    return {
        "dry_run": True,
        "command": "score",
        "model": spec.model_id,
        "classes": list(spec.classes),
        "input": root.uri,
        "listed": listed,
        "listing": "from the last run's watermark" if listing is not None and listing.after else "full",
        "to_score": "listed files not already in --out (counted by the run)" if opts.incremental else listed,
        "tta": {"n": tta.n, "beta": tta.beta, "max": tta.use_max},
        "resources": _resources(listed, opts),
        "previous_runs": len(runs),
        "writes": {
            "predictions": f"{output}/predictions/run=<run id>/",
            "errors": f"{output}/errors/run=<run id>/",
            "summary": f"{output}/summary.json",
            "deletes_previous_runs": bool(opts.overwrite and runs),
        },
    }


def _finished_runs(output: str | Path) -> list[str]:
    """The runs already in `output`, read without creating it (none where nothing is there yet)."""
    try:
        return sorted(OutputStore.open(output).committed_runs())
    except InputError:
        return []


def _resources(files: int, opts: ScoreOptions) -> str:
    """How the run would be placed: on a cluster (RAY_ADDRESS) only the request, since the pool is sized
    from what the cluster has when the run joins it; else this machine's CPUs as the embedded Ray sees them."""
    if os.environ.get("RAY_ADDRESS"):
        actors = f"{opts.actors or 1}..{opts.max_actors or 'autoscale'}"
        return f"on the cluster at RAY_ADDRESS: {actors} actor(s), sized when the run joins it"
    if opts.gpus_per_actor:
        return f"GPU actors ({opts.gpus_per_actor:g} GPU each), planned when the embedded Ray starts"
    cpus = os.cpu_count() or 1
    plan = in_process_plan(files, opts, cpus, on_cluster=False) or plan_resources({"CPU": float(cpus)}, opts)
    return plan.describe()
