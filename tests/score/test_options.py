"""Options objects validate themselves, and the CLI takes its defaults and choices from them.

ScoreOptions (score/options.py) and TrainOptions (train/config.py) raise InputError on construction,
naming the offending flag, so bad values fail before any listing or Ray work; the `vehicle-ray`
command line cannot drift from the library because its defaults and choices are read from them.
"""

import dataclasses
import re

import pytest
from click.testing import CliRunner

from vehicle_ray.cli import cli
from vehicle_ray.errors import InputError
from vehicle_ray.score.options import BACKENDS, TTA_PRECISIONS, ScoreOptions, parse_actors
from vehicle_ray.train.config import TrainOptions

BAD_SCORE_OPTIONS = [
    ({"backend": "tensorrt"}, "--backend"),
    ({"tta_precision": "fp8"}, "--tta-precision"),
    ({"batch_size": 0}, "--batch-size"),
    ({"tta_n": -1}, "--tta-n"),
    ({"tta_beta": 1.5}, "--tta-beta"),
    ({"tta_beta": -0.1}, "--tta-beta"),
    ({"actors": 0}, "--actors"),
    ({"cpus_per_actor": 0}, "--cpus-per-actor"),
    ({"gpus_per_actor": -1}, "--gpus-per-actor"),
    ({"max_pixels": 0}, "--max-pixels"),
    ({"in_process_up_to": -1}, "--in-process-up-to"),
]


@pytest.mark.parametrize("change, flag", BAD_SCORE_OPTIONS)
def test_bad_score_option_is_input_error_naming_the_flag(change, flag):
    with pytest.raises(InputError, match=re.escape(flag)):
        ScoreOptions(**change)


@pytest.mark.parametrize("change, flag", BAD_SCORE_OPTIONS)
def test_replace_validates_again(change, flag):
    with pytest.raises(InputError, match=re.escape(flag)):
        ScoreOptions().replace(**change)


def test_defaults_and_boundaries_are_valid():
    ScoreOptions()
    ScoreOptions(tta_n=0, tta_beta=0.0, actors=1, cpus_per_actor=0.25, gpus_per_actor=0.5, max_pixels=1, batch_size=1)
    assert ScoreOptions().replace(tta_beta=1.0).tta_beta == 1.0


def test_every_problem_is_reported_at_once():
    with pytest.raises(InputError) as info:
        ScoreOptions(batch_size=0, actors=0, backend="x")
    assert all(flag in str(info.value) for flag in ("--batch-size", "--actors", "--backend"))


def test_options_are_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ScoreOptions().batch_size = 1


def test_actor_range():
    assert parse_actors(None) == (None, None)
    assert parse_actors("3") == (3, None)
    assert parse_actors("2..8") == (2, 8)
    with pytest.raises(InputError, match="--actors"):
        parse_actors("two")
    with pytest.raises(InputError, match="--actors"):
        ScoreOptions(actors=5, max_actors=2)


@pytest.mark.parametrize(
    "change, flag",
    [
        ({"workers": 0}, "--workers"),
        ({"max_failures": -1}, "--max-failures"),
        ({"cpus_per_worker": 0}, "--cpus-per-worker"),
    ],
)
def test_bad_train_option_is_input_error_naming_the_flag(change, flag):
    with pytest.raises(InputError, match=re.escape(flag)):
        TrainOptions(csv="t.csv", images="img", out="out", **change)


def test_train_defaults_are_valid():
    opts = TrainOptions(csv="t.csv", images="img", out="out")
    assert (opts.workers, opts.max_failures, opts.cpus_per_worker) == (1, 0, None)


def _param(command: str, name: str):
    return next(p for p in cli.commands[command].params if p.name == name)


@pytest.mark.parametrize("command", ["score", "evaluate"])
def test_cli_defaults_and_choices_are_the_librarys(command):
    defaults = ScoreOptions()
    assert _param(command, "batch_size").default == defaults.batch_size
    assert _param(command, "backend").default == defaults.backend
    assert tuple(_param(command, "backend").type.choices) == BACKENDS


def test_score_cli_defaults_and_choices_are_the_librarys():
    defaults = ScoreOptions()
    for name in ("gpus_per_actor", "tta_precision", "max_pixels"):
        assert _param("score", name).default == getattr(defaults, name), name
    assert tuple(_param("score", "tta_precision").type.choices) == TTA_PRECISIONS
    assert _param("train", "workers").default == TrainOptions.__dataclass_fields__["workers"].default
    assert _param("train", "max_failures").default == TrainOptions.__dataclass_fields__["max_failures"].default


def test_score_help_shows_the_librarys_choices_and_defaults():
    result = CliRunner().invoke(cli, ["score", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert f"[{'|'.join(BACKENDS)}]" in text
    assert f"[{'|'.join(TTA_PRECISIONS)}]" in text
    batch_line = next(line for line in result.output.splitlines() if "--bs " in line)
    assert f"[default: {ScoreOptions().batch_size}]" in batch_line
