"""Which model each TTA pass runs on (no Ray: the choice is made on the driver)."""

import pytest

from tests.score.specs import model_spec
from vehicle_ray.errors import InputError
from vehicle_ray.score.options import ScoreOptions
from vehicle_ray.score.planning import tta_settings


@pytest.mark.parametrize(
    "opts, has_int8, plain, aug",
    [
        (ScoreOptions(), True, "int8", "int8"),  # CPU default: every TTA pass on int8
        (ScoreOptions(), False, "fp32", "fp32"),  # an older artifact without model.int8.onnx
        (ScoreOptions(no_tta=True), True, "fp32", "none"),  # without TTA: always exact
        (ScoreOptions(tta_n=0), True, "fp32", "none"),
        (ScoreOptions(emit_plain=True), True, "fp32", "int8"),  # evaluate reports the plain pass on its own
        (ScoreOptions(tta_precision="full"), True, "fp32", "fp32"),
        (ScoreOptions(backend="torch"), True, "fp32", "fp32"),
        (ScoreOptions(gpus_per_actor=1), True, "bf16", "bf16"),
    ],
)
def test_pass_precisions(opts, has_int8, plain, aug):
    settings = tta_settings(model_spec(has_int8), opts)
    assert (settings.plain_precision, settings.aug_precision) == (plain, aug)


def test_int8_where_it_cannot_run_is_bad_usage():
    with pytest.raises(InputError, match="--tta-precision int8 needs"):
        tta_settings(model_spec(has_int8=False), ScoreOptions(tta_precision="int8"))
