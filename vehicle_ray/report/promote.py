"""The promotion gate: a candidate model replaces the champion only if it is not worse on a labeled holdout.

Both models go through the evaluate path on the same holdout (each at its own operating point, from its
model.json, for precision and recall). The gate compares one metric: the candidate passes unless it is
worse than the champion by more than --max-drop (ECE: lower is better, so "worse" means higher). A pass
moves an MLflow alias to the candidate's registered version and/or publishes the candidate's artifact to
a URI; a refusal raises PromotionRefused (exit 77) after the report is written, so a person can see why.

    OUT/report.md           the comparison, the gate's verdict, the disagreements picture
    OUT/disagreements.png   holdout images the two models label differently, with both predictions
    OUT/candidate/, OUT/champion/   each model's full evaluate report
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from vehicle_ray import columns as col
from vehicle_ray.data import FN, LabeledFiles, open_root
from vehicle_ray.errors import InputError, PromotionRefused
from vehicle_ray.report.evaluate import evaluate
from vehicle_ray.report.plots import image_grid
from vehicle_ray.score.decode import read_file
from vehicle_ray.score.model import ModelSpec, resolve_model
from vehicle_ray.score.options import ScoreOptions
from vehicle_ray.tracking import TrackingOptions, client, experiment_id, log_batch, require_mlflow, tolerant
from vehicle_ray.train.artifact_writer import publish

HIGHER_IS_BETTER = {"accuracy": True, "precision": True, "recall": True, "ece": False}
GATE_METRICS = tuple(HIGHER_IS_BETTER)
SHOWN_DISAGREEMENTS = 12
CANDIDATE, CHAMPION = "_candidate", "_champion"  # disagreement_rows' suffixes on each model's columns
PROMOTE_EXPERIMENT = "vehicle-ray-promote"


@dataclass(frozen=True)
class Gate:
    """The promotion rule: the candidate passes unless it is worse than the champion on `metric` by more
    than `max_drop` (ECE: lower is better). Checked on construction, before any model is read."""

    metric: str = "accuracy"
    max_drop: float = 0.0

    def __post_init__(self) -> None:
        if self.metric not in HIGHER_IS_BETTER:
            raise InputError(f"--metric must be one of {', '.join(GATE_METRICS)} (got {self.metric!r})")
        if self.max_drop < 0:
            raise InputError(f"--max-drop must be >= 0 (got {self.max_drop})")


@dataclass(frozen=True)
class PromoteTarget:
    """Where a promotion goes: an MLflow alias on a registered version, and/or an artifact URI."""

    alias: str | None = None
    publish_to: str | None = None


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    metric: str
    candidate: float
    champion: float
    drop: float  # how much worse the candidate is on `metric` (negative: better)
    disagreements: int
    report: Path
    actions: tuple[str, ...]  # what a pass did ("alias production -> NAME version 3", "published to URI")

    def line(self) -> str:
        verdict = "promoted" if self.promoted else "kept the champion"
        done = f"; {'; '.join(self.actions)}" if self.actions else ""
        return (
            f"{verdict}: {self.metric} candidate {self.candidate:.4f} vs champion {self.champion:.4f}, "
            f"{self.disagreements} disagreements{done}; report: {self.report}"
        )


def promote(
    candidate: str,
    champion: str,
    holdout: LabeledFiles,
    out: str | Path,
    gate: Gate = Gate(),
    target: PromoteTarget = PromoteTarget(),
    opts: ScoreOptions = ScoreOptions(),
    tracking: TrackingOptions = TrackingOptions(),
) -> Promotion:
    """Compare the two models on the holdout, write the report, and promote the candidate if the gate
    passes; PromotionRefused (after the report and any MLflow logging) if it does not."""
    metric, max_drop = gate.metric, gate.max_drop
    uri = tracking.tracking_uri
    cand, champ = resolve_model(candidate, tracking_uri=uri), resolve_model(champion, tracking_uri=uri)
    if cand.classes != champ.classes:
        raise InputError(f"the candidate's classes {cand.classes} differ from the champion's {champ.classes}")
    version = _alias_version(cand, champ, target.alias, uri) if target.alias else None
    out = Path(out)
    results = {
        role: evaluate(str(spec.directory), holdout, out / role, opts)
        for role, spec in (("candidate", cand), ("champion", champ))
    }
    values = {role: gate_metrics(m) for role, m in results.items()}
    a, b = values["candidate"][metric], values["champion"][metric]
    if a is None or b is None:
        raise InputError(f"--metric {metric} needs a positive class (a two-class model or an operating point)")
    drop = (b - a) if HIGHER_IS_BETTER[metric] else (a - b)
    promoted = drop <= max_drop + 1e-12
    disagreements = disagreement_rows(out)
    _disagreements_plot(disagreements, holdout.images, out / "disagreements.png")
    actions: list[str] = []
    if promoted:
        if version is not None:
            actions.append(_move_alias(version, target.alias, uri))
        if target.publish_to:
            publish(cand.directory, target.publish_to, overwrite=True)
            actions.append(f"published to {target.publish_to}")
    result = Promotion(promoted, metric, a, b, round(drop, 6), len(disagreements), out / "report.md", tuple(actions))
    _write_report(result, max_drop, values, results, cand, champ)
    if tracking.enabled:
        _log(tracking, result, values, candidate, champion, max_drop)
    if not promoted:
        raise PromotionRefused(
            f"candidate {metric} {a:.4f} is {drop:.4f} worse than the champion's {b:.4f} "
            f"(--max-drop {max_drop}); report: {result.report}"
        )
    return result


def gate_metrics(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The gate's metrics from evaluate's metrics.json: accuracy, ECE, and the positive class's precision
    and recall at the model's operating point (at the argmax decision when it has none)."""
    decision = metrics.get("decision")
    point = decision["operating_point"] if decision else None
    per_class = metrics["per_class"][decision["positive_class"]] if decision else None
    source = point or per_class
    return {
        "accuracy": metrics["accuracy"],
        "precision": source["precision"] if source else None,
        "recall": source["recall"] if source else None,
        "ece": metrics["calibration"]["ece"],
    }


def disagreement_rows(out: Path) -> pd.DataFrame:
    """Holdout images the two models label differently: fn, actual, and each model's label and confidence;
    the candidate's mistakes (what promoting it would break) first."""
    keep = [FN, col.ACTUAL, col.LABEL, col.CONFIDENCE]
    cand = pd.read_parquet(out / "candidate" / "predictions.parquet", columns=keep)
    champ = pd.read_parquet(out / "champion" / "predictions.parquet", columns=keep)
    both = cand.merge(champ.drop(columns=col.ACTUAL), on=FN, suffixes=(CANDIDATE, CHAMPION))
    differ = both[both[col.LABEL + CANDIDATE] != both[col.LABEL + CHAMPION]]
    order = (differ[col.LABEL + CANDIDATE] == differ[col.ACTUAL]).astype(int)
    return differ.assign(_order=order).sort_values(["_order", FN]).drop(columns="_order").reset_index(drop=True)


def _disagreements_plot(rows: pd.DataFrame, images: str | Path, path: Path) -> None:
    root = open_root(images)
    shown = rows.head(SHOWN_DISAGREEMENTS)
    titles = [
        f"new {r[col.LABEL + CANDIDATE]} ({r[col.CONFIDENCE + CANDIDATE]:.2f}) / old {r[col.LABEL + CHAMPION]} "
        f"({r[col.CONFIDENCE + CHAMPION]:.2f})\nactual {r[col.ACTUAL]}"
        for _, r in shown.iterrows()
    ]

    def load(name: str) -> Image.Image:
        return Image.open(BytesIO(read_file(root, name))).convert("RGB")

    wrong = int((rows[col.LABEL + CANDIDATE] != rows[col.ACTUAL]).sum())
    suptitle = f"candidate (new) vs champion (old): {len(rows)} disagreements, the candidate wrong in {wrong}" + (
        f", first {SHOWN_DISAGREEMENTS} shown" if len(rows) > SHOWN_DISAGREEMENTS else ""
    )
    image_grid(shown[FN].tolist(), titles, load, suptitle, "the models agree on every image", path, columns=4)


def _alias_version(cand: ModelSpec, champ: ModelSpec, alias: str, uri: str | None) -> tuple[str, str]:
    """(registered name, version) the alias will point at, checked before any scoring: the candidate's own
    models:/ version, or the version of the champion's registered model that holds the candidate's weights."""
    require_mlflow("--alias")
    if cand.registry_name:
        return cand.registry_name, str(cand.registry_version)
    if not champ.registry_name:
        raise InputError(f"--alias {alias} needs a registered model: pass the candidate or champion as models:/...")
    name = champ.registry_name
    found = [
        v.version
        for v in client(uri).search_model_versions(f"name = '{name}'")
        if v.tags.get("model_sha256") == cand.model_sha256
    ]
    if not found:
        raise InputError(f"no version of {name} holds the candidate {cand.model_id} (train --register-model {name})")
    return name, str(max(found, key=int))


def _move_alias(version: tuple[str, str], alias: str, uri: str | None) -> str:
    name, number = version
    client(uri).set_registered_model_alias(name, alias, number)
    return f"alias {alias} -> {name} version {number}"


def _write_report(
    result: Promotion,
    max_drop: float,
    values: dict[str, dict[str, float | None]],
    metrics: dict[str, dict[str, Any]],
    cand: ModelSpec,
    champ: ModelSpec,
) -> None:
    def cell(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    verdict = "**promoted**" if result.promoted else "**refused** (the champion stays)"
    lines = [
        "# Promotion report",
        "",
        f"Candidate `{cand.model_id}` against champion `{champ.model_id}` on {metrics['candidate']['n']} "
        "labeled holdout images.",
        "",
        f"Gate: `{result.metric}` may be worse by at most {max_drop}. Candidate {result.candidate:.4f}, "
        f"champion {result.champion:.4f}: {verdict}.",
        *([""] + [f"* {a}" for a in result.actions] if result.actions else []),
        "",
        "| metric | candidate | champion | better |",
        "| --- | --- | --- | --- |",
        *[
            f"| {m} | {cell(values['candidate'][m])} | {cell(values['champion'][m])} | "
            f"{'higher' if HIGHER_IS_BETTER[m] else 'lower'} |"
            for m in GATE_METRICS
        ],
        "",
        "Precision and recall: the positive class at each model's operating point (model.json).",
        "",
        f"## Disagreements ({result.disagreements})",
        "",
        "![disagreements](disagreements.png)",
        "",
        "Full reports: [candidate](candidate/report.md), [champion](champion/report.md).",
        "",
    ]
    result.report.write_text("\n".join(lines))


def _log(
    tracking: TrackingOptions,
    result: Promotion,
    values: dict[str, dict[str, float | None]],
    candidate: str,
    champion: str,
    max_drop: float,
) -> None:
    """One MLflow run per promotion decision: both models' metrics, the verdict, the report and picture."""
    with tolerant("log the promotion"):
        mlflow_client = client(tracking.tracking_uri)
        run = mlflow_client.create_run(
            experiment_id(mlflow_client, tracking.experiment or PROMOTE_EXPERIMENT),
            run_name=tracking.run_name,
            tags={"vehicle_ray.promoted": str(result.promoted).lower()},
        )
        numbers = {f"{role}.{m}": v for role, row in values.items() for m, v in row.items() if v is not None}
        numbers.update(drop=result.drop, promoted=float(result.promoted), disagreements=float(result.disagreements))
        params = {"candidate": candidate, "champion": champion, "metric": result.metric, "max_drop": str(max_drop)}
        log_batch(mlflow_client, run.info.run_id, numbers, params=params)
        for name in ("report.md", "disagreements.png"):
            mlflow_client.log_artifact(run.info.run_id, str(result.report.parent / name))
        mlflow_client.set_terminated(run.info.run_id, "FINISHED")
