"""Experiment tracking and the model registry on an MLflow tracking server (opt-in: --mlflow).

MLflow is an optional extra (`pip install 'vehicle_ray[mlflow]'`): it is imported only when a flag asks
for it, and a missing install is one InputError naming the extra. Tracking is a side channel: a server
that is down or slow must never fail a training or a scoring run, so every logging call goes through
`tolerant` (a warning, then the run goes on) and the HTTP client runs with short timeouts and few
retries instead of MLflow's default of 7 retries with backoff (minutes per call). Reading a model from
the registry (`--model models:/NAME@alias`) is different: without the server there is no model, and
that is an error.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator
from urllib.parse import quote

from vehicle_ray.errors import InputError

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

MLFLOW_EXTRA = "pip install 'vehicle_ray[mlflow]'"
# MLflow's HTTP client reads these per request; an explicit setting in the environment wins.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
MODEL_CACHE_ENV = "VEHICLE_RAY_MODEL_CACHE"  # where registry models are downloaded to (once per version)
REGISTRY_ARTIFACT_PATH = "model"  # the artifact directory inside a training's MLflow run
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")


def require_mlflow(flag: str) -> None:
    """Fail with one line naming the extra when MLflow is not installed."""
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise InputError(f"{flag} needs MLflow, which is not installed: {MLFLOW_EXTRA}") from None


@dataclass(frozen=True)
class TrackingOptions:
    """Where runs are logged. `uri` None: MLFLOW_TRACKING_URI. `experiment` None: the command's default."""

    enabled: bool = False
    uri: str | None = None
    experiment: str | None = None
    run_name: str | None = None
    register_model: str | None = None

    def __post_init__(self) -> None:
        if not self.enabled:
            if self.register_model:
                raise InputError("--register-model needs --mlflow (the version is registered from the run)")
            return
        if not self.tracking_uri:
            raise InputError("--mlflow needs a tracking server: pass --mlflow-uri URI or set MLFLOW_TRACKING_URI")
        require_mlflow("--mlflow")

    @property
    def tracking_uri(self) -> str | None:
        return self.uri or os.environ.get("MLFLOW_TRACKING_URI")


def client(uri: str) -> MlflowClient:
    """An MLflow client for `uri` (tracking and registry) with short HTTP timeouts and retries."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextmanager
def tolerant(what: str) -> Iterator[None]:
    """Run a tracking call; any failure (server down, timeout, rejected request) becomes a warning.
    Deliberately broad: MLflow wraps HTTP errors in MlflowException but a half-up server can raise
    anything from requests or urllib3, and none of it may stop the run being tracked."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        logger.warning(f"MLflow: could not {what} ({type(exc).__name__}: {first[:300]}); the run goes on without it")


def experiment_id(mlflow_client: MlflowClient, name: str) -> str:
    found = mlflow_client.get_experiment_by_name(name)
    return found.experiment_id if found else mlflow_client.create_experiment(name)


def numeric_fields(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number in a (nested) JSON-like record, keyed by its dotted path; booleans are not numbers."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(numeric_fields(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    directory: Path  # the verified-on-use local copy

    @property
    def uri(self) -> str:
        """The pinned URI: an alias moved mid-run must not change what later actors download."""
        return f"models:/{self.name}/{self.version}"


def is_registry_uri(model: str | Path) -> bool:
    return str(model).startswith("models:/")


def model_cache_root() -> Path:
    return Path(os.environ.get(MODEL_CACHE_ENV) or Path.home() / ".cache" / "vehicle_ray" / "registry")


def fetch_registered(model: str, tracking_uri: str | None = None) -> RegisteredModel:
    """Resolve models:/NAME/VERSION or models:/NAME@ALIAS to a version and download its artifact once
    per version into the model cache (later calls reuse it; the caller verifies sha256s as for any
    artifact). The download lands beside the cache entry and is renamed into place: never half a model."""
    match = _MODELS_URI.match(model)
    if not match:
        raise InputError(f"--model {model}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
    require_mlflow("--model models:/...")
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise InputError(f"--model {model} needs a tracking server: set MLFLOW_TRACKING_URI or pass --mlflow-uri")
    from mlflow.exceptions import MlflowException

    mlflow_client = client(uri)
    name = match["name"]
    try:
        version = match["version"] or mlflow_client.get_model_version_by_alias(name, match["alias"]).version
        target = model_cache_root() / quote(name, safe="") / str(version)
        if not target.is_dir():
            _download(mlflow_client.get_model_version_download_uri(name, version), uri, target)
    except MlflowException as exc:
        raise InputError(f"cannot resolve --model {model} at {uri}: {str(exc).splitlines()[0]}") from None
    return RegisteredModel(name=name, version=str(version), directory=target)


def _download(artifact_uri: str, tracking_uri: str, target: Path) -> None:
    import mlflow.artifacts

    def download(staging: Path) -> Path:
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=artifact_uri, dst_path=str(staging), tracking_uri=tracking_uri
            )
        )

    install_cache_entry(target, download)
    logger.info(f"downloaded {artifact_uri} to {target}")


def install_cache_entry(target: Path, fill: Callable[[Path], Path]) -> None:
    """Put a model-cache entry in place whole: `fill(staging)` fills a fresh directory beside `target`
    and returns what to install (that directory or a path inside it), which is then renamed to
    `target`, never half a model. When another process (another actor on this node, another run)
    installed the same entry first, that copy is kept and this one dropped."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        built = fill(staging)
        try:
            os.replace(built, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def log_scoring_run(opts: TrackingOptions, summary: dict[str, Any], params: dict[str, str]) -> None:
    """One MLflow run per committed scoring run: every number of summary.json as a metric (nested
    fields by dotted name, so fields added to the summary later flow through), what was scored as
    params, and the model's identity (id, sha256, registry name/version) as tags."""
    with tolerant("log the scoring run"):
        mlflow_client = client(opts.tracking_uri)
        tags = {
            k: str(summary[k])
            for k in ("run_id", "model_id", "model_sha256", "model_registry_name", "model_registry_version")
            if summary.get(k) is not None
        }
        run = mlflow_client.create_run(
            experiment_id(mlflow_client, opts.experiment or "vehicle-ray-score"),
            run_name=opts.run_name or f"score-{summary['run_id']}",
            tags={f"vehicle_ray.{k}": v for k, v in tags.items()},
        )
        log_batch(mlflow_client, run.info.run_id, numeric_fields(summary), params=params)
        mlflow_client.set_terminated(run.info.run_id, "FINISHED")
        logger.info(f"MLflow: logged scoring run {run.info.run_id}")


def log_batch(
    mlflow_client: MlflowClient,
    run_id: str,
    metrics: dict[str, float],
    step: int = 0,
    params: dict[str, str] | None = None,
) -> None:
    """Metrics (at one step) and params in one request."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    mlflow_client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, step) for k, v in metrics.items()],
        params=[Param(k, str(v)) for k, v in (params or {}).items()],
    )
