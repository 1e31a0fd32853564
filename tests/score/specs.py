"""A ModelSpec as the driver reads it from model.json, for tests of the driver-side decisions."""

from pathlib import Path

from vehicle_ray.score.model import ModelSpec
from vehicle_ray.tta import TTASettings


def model_spec(has_int8: bool = True, n: int = 4, beta: float = 0.25) -> ModelSpec:
    return ModelSpec(
        source="m",
        directory=Path("m"),
        allow_pickle=False,
        classes=["a", "b"],
        size=64,
        resize_method="squish",
        model_id="m",
        model_sha256="0",
        tta_defaults=TTASettings(n, beta),
        has_onnx=True,
        has_int8=has_int8,
    )
