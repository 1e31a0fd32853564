"""A user's first hour with the command line: --version, environment variables, old spellings that keep
working while --help teaches the new ones, --dry-run that starts nothing, --json that parses, a demo that
never deletes what it did not make, readers that never create a path, the effective recipe as TOML."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
import tomllib

from tests.conftest import our_stderr, run_cli
from vehicle_ray import __version__
from vehicle_ray.cli import cli
from vehicle_ray.errors import InputError
from vehicle_ray.recipe import load_recipe, recipe_from_dict

REPO = Path(__file__).resolve().parents[1]
REQUIRED = {
    "score": ["--model", "m", "--input", "in"],
    "evaluate": ["--model", "m", "--csv", "c.csv", "--images", "i", "--out", "o"],
}
# Renamed options: (command, old spelling, new spelling, parameter, value both must give)
RENAMED = [
    ("score", ["--output", "o"], ["--out", "o"], "output", "o"),
    ("score", ["--out", "o", "--batch-size", "8"], ["--out", "o", "--bs", "8"], "batch_size", 8),
    ("score", ["--out", "o", "--overwrite"], ["--out", "o", "--delete-previous-runs"], "overwrite", True),
    ("evaluate", ["--batch-size", "16"], ["--bs", "16"], "batch_size", 16),
]
# Switches that existed only as one side now have both; the side that existed keeps its value.
KEPT_SWITCHES = [
    ("score", "--no-tta", "tta", False),
    ("score", "--no-lease", "lease", False),
    ("score", "--no-calibration", "calibration", False),
    ("score", "--tta-max", "tta_max", True),
    ("score", "--exact-decode", "exact_decode", True),
    ("score", "--incremental", "incremental", True),
    ("score", "--allow-pickle", "allow_pickle", True),
    ("score", "--mlflow", "mlflow_on", True),
    ("evaluate", "--no-tta", "tta", False),
    ("evaluate", "--save-operating-point", "save_operating_point", True),
]
NEW_ONLY = {"score": [r"--output\b", r"--batch-size\b", r"--overwrite\b"], "evaluate": [r"--batch-size\b"]}


def parsed(command: str, args: list[str]) -> dict:
    """The parameters click's real parser gives `vehicle-ray COMMAND ARGS` (nothing is run)."""
    # the group's own context settings: click caches a command's help option from the first context
    # that asks for it, so a context without help_option_names would change every later --help
    parent = click.Context(cli, info_name="vehicle-ray", **cli.context_settings)
    cmd = cli.get_command(parent, command)
    with cmd.make_context(command, REQUIRED.get(command, []) + args, parent=parent) as ctx:
        return ctx.params


@pytest.mark.parametrize(("command", "old", "new", "name", "value"), RENAMED)
def test_every_old_spelling_parses_to_the_same_value_as_the_new_one(command, old, new, name, value):
    old_params = parsed(command, old)
    assert old_params == parsed(command, new)
    assert old_params[name] == value


@pytest.mark.parametrize(("command", "switch", "name", "value"), KEPT_SWITCHES)
def test_one_sided_switches_of_before_keep_their_value(command, switch, name, value):
    out = ["--out", "o"] if command == "score" else []
    assert parsed(command, out)[name] is not value
    assert parsed(command, [*out, switch])[name] is value


def help_text(command: str) -> str:
    """`vehicle-ray COMMAND --help` as click renders it."""
    parent = click.Context(cli, info_name="vehicle-ray", **cli.context_settings)
    cmd = cli.get_command(parent, command)
    return cmd.get_help(click.Context(cmd, info_name=command, parent=parent))


@pytest.mark.parametrize("command", sorted(NEW_ONLY))
def test_help_shows_only_the_new_names(command):
    text = help_text(command)
    assert "--out " in text and "--bs " in text and "--tta / --no-tta" in text
    for old in NEW_ONLY[command]:
        assert not re.search(old, text), old


def test_runs_takes_the_output_as_out_and_as_the_old_positional(tmp_path):
    result_new, result_old = run_cli("runs", "--out", str(tmp_path)), run_cli("runs", str(tmp_path))
    assert result_new.returncode == result_old.returncode == 0, result_new.stderr + result_old.stderr
    assert result_new.stdout == result_old.stdout and result_new.stdout.split()[:4] == [
        "RUN",
        "TIME",
        "MODEL",
        "VERSION",
    ]


def test_version_is_the_package_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"vehicle-ray {__version__}"


def test_a_job_entry_point_takes_the_command_line_of_its_command():
    result = subprocess.run(
        [sys.executable, str(REPO / "jobs" / "score.py"), "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "--out DIR|URI" in result.stdout and "--output" not in result.stdout


def test_environment_variables_set_options_named_after_the_option(monkeypatch):
    monkeypatch.setenv("VEHICLE_RAY_SCORE_OUT", "from_env")  # the parameter is `output`: named after --out
    monkeypatch.setenv("VEHICLE_RAY_SCORE_BS", "7")
    monkeypatch.setenv("VEHICLE_RAY_SCORE_TTA", "false")
    monkeypatch.setenv("VEHICLE_RAY_SCORE_WAIT_FOR_RESOURCES", "30")
    params = parsed("score", [])
    assert (params["output"], params["batch_size"], params["tta"], params["wait_for_resources"]) == (
        "from_env",
        7,
        False,
        30,
    )
    assert parsed("score", ["--out", "flag", "--tta"])["output"] == "flag"  # a flag wins over the variable
    assert parsed("score", ["--tta"])["tta"] is True


def test_dry_run_prints_the_plan_as_json_and_starts_no_ray(sample_dir, tmp_path):
    """`train --dry-run --json` in a fresh interpreter, its CSV from VEHICLE_RAY_TRAIN_CSV: stdout is one
    JSON plan; afterwards Ray is not initialised, no Ray session directory (RAY_TMPDIR) exists and nothing
    was written."""
    script = textwrap.dedent(
        f"""
        import sys
        import ray
        from vehicle_ray.cli import cli
        try:
            cli(["train", "--images", {str(sample_dir / "images")!r}, "--out", {str(tmp_path / "model")!r},
                 "--config", "tiny_cpu", "--workers", "4", "--dry-run", "--json"], prog_name="vehicle-ray")
        except SystemExit as exc:
            assert exc.code in (0, None), exc.code
        print("ray initialised:", ray.is_initialized(), file=sys.stderr)
        """
    )
    ray_tmp = tmp_path / "ray_tmp"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"RAY_TMPDIR": str(ray_tmp), "VEHICLE_RAY_TRAIN_CSV": str(sample_dir / "train.csv")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["csvs"] == [str(sample_dir / "train.csv")] and plan["workers"] == 4
    assert plan["images"] == 400 and plan["train_images"] + plan["valid_images"] == 400
    assert plan["batch"] == 32 and plan["batch_per_worker"] == 8
    assert "ray initialised: False" in result.stderr
    assert not ray_tmp.exists() and not (tmp_path / "model").exists()


def test_dry_run_refuses_what_the_run_would_refuse(sample_dir, tmp_path):
    from vehicle_ray.train.config import TrainOptions
    from vehicle_ray.train.dry_run import training_plan

    missing = TrainOptions(csv=tmp_path / "nope.csv", images=sample_dir / "images", out=tmp_path / "m")
    with pytest.raises(InputError, match="nope.csv"):
        training_plan(missing, load_recipe("tiny_cpu"))
    uneven = TrainOptions(csv=sample_dir / "train.csv", images=sample_dir / "images", out=tmp_path / "m", workers=3)
    with pytest.raises(InputError):
        training_plan(uneven, load_recipe("tiny_cpu"))  # 32 images a batch do not split over 3 workers
    assert not (tmp_path / "m").exists()


def test_demo_refuses_the_current_directory_and_a_foreign_directory(tmp_path):
    from vehicle_ray.demo import MARKER, prepare_out

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    result = subprocess.run(
        [sys.executable, "-m", "vehicle_ray.cli", "demo", "--out", "."], capture_output=True, text=True, cwd=foreign
    )
    assert result.returncode == 2 and "current or home directory" in result.stderr
    assert len(our_stderr(result.stderr).strip().splitlines()) == 1
    with pytest.raises(InputError, match="not made by the demo"):
        prepare_out(foreign)
    with pytest.raises(InputError, match="current or home"):
        prepare_out(Path.home())
    assert (foreign / "thesis.tex").read_text() == "precious"
    made = prepare_out(tmp_path / "demo")  # new: the demo makes it, and may replace it later
    (made / "model.json").write_text("{}")
    assert prepare_out(made) == made and (made / MARKER).exists() and not (made / "model.json").exists()
    assert prepare_out(foreign, force=True) == foreign and not (foreign / "thesis.tex").exists()


def test_readers_never_create_the_path_they_read(tmp_path):
    from vehicle_ray.score.store import OutputStore

    typo = tmp_path / "scroes"
    with pytest.raises(InputError, match="no scoring output"):
        OutputStore.open(typo)
    result = run_cli("runs", "--out", str(typo))
    assert result.returncode == 2 and our_stderr(result.stderr).startswith("Error: no scoring output")
    assert not typo.exists()


@pytest.mark.parametrize("recipe", ["tiny_cpu", None])
def test_recipe_show_prints_the_effective_recipe_as_loadable_toml(recipe, tmp_path):
    result = run_cli("recipe", "show", *([recipe] if recipe else []))
    assert result.returncode == 0, result.stderr
    shown = recipe_from_dict(tomllib.loads(result.stdout))
    assert shown == load_recipe(recipe)
    path = tmp_path / "r.toml"
    path.write_text(result.stdout.replace("arch = ", 'arch = "resnet34"\n# was: ', 1))
    assert run_cli("recipe", "show", str(path)).stdout.startswith('arch = "resnet34"')


def test_runs_shows_the_model_and_its_registry_version():
    from vehicle_ray.monitoring import format_table, run_rows

    rows = run_rows(
        {
            "20261201T020000Z-aaaaaa": {"files_seen": 5, "model_id": "resnet18-0a1b", "model_registry_name": "vehicles"}
            | {"model_registry_version": "3"},
            "20261202T020000Z-bbbbbb": {"files_seen": 5, "model_id": "resnet18-9f8e"},  # scored from a directory
        }
    )
    header, registered, plain = (line.split() for line in format_table(rows).splitlines())
    assert header[:4] == ["RUN", "TIME", "MODEL", "VERSION"]
    assert registered[2:4] == ["resnet18-0a1b", "vehicles/3"] and plain[2:4] == ["resnet18-9f8e", "-"]
    assert rows[0]["model_registry_version"] == "3" and rows[1]["model_registry_name"] is None


@pytest.mark.parametrize("command", ["train", "score"])
def test_help_is_grouped_by_topic_and_shows_every_option(command):
    text = help_text(command)
    sections = re.findall(r"^(\S[^\n]*):$", text, re.M)
    assert len(sections) >= 6 and sections[-1] == "Other options" and "Tracking (MLflow)" in sections
    options = [p for p in cli.commands[command].params if isinstance(p, click.Option) and not p.hidden]
    missing = [p.opts[0] for p in options if not re.search(rf"^\s+{re.escape(p.opts[0])}\b", text, re.M)]
    assert missing == []
