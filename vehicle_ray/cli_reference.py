"""docs/cli.md, generated from the command line itself: `python -m vehicle_ray.cli_reference > docs/cli.md`
(`make docs`). tests/test_docs.py fails when the file differs from what this prints, so the reference
cannot drift from `--help`.

Each command gets its `--help` (at a fixed width, so the output does not depend on the terminal) and
the environment variables that set its options.
"""

from __future__ import annotations

from typing import Iterator

import click

from vehicle_ray.cli import cli
from vehicle_ray.cli_support import ENVVAR_PREFIX, envvar_name

WIDTH = 100
PROG = "vehicle-ray"

HEADER = f"""# CLI reference

Generated from `{PROG} --help` by `python -m vehicle_ray.cli_reference > docs/cli.md` (`make docs`); do
not edit by hand. `jobs/train.py`, `jobs/score.py` and `jobs/lr_find.py` take exactly the options of
`train`, `score` and `lr-find`.

Every option can also be set by an environment variable: `{ENVVAR_PREFIX}_<COMMAND>_<OPTION>`, the
command and the option's first long name in capitals with `-` as `_` (`score --model` is
`{ENVVAR_PREFIX}_SCORE_MODEL`, `train --gpu/--cpu` is `{ENVVAR_PREFIX}_TRAIN_GPU=true|false`). A flag on
the command line wins over the variable. Each command's list is below its help.

Shell completion (click's): add `eval "$(_VEHICLE_RAY_COMPLETE=bash_source vehicle-ray)"` to `~/.bashrc`
(`zsh_source` in `~/.zshrc`; for fish, `_VEHICLE_RAY_COMPLETE=fish_source vehicle-ray | source`).
"""


def commands(group: click.Group, ctx: click.Context) -> Iterator[tuple[click.Command, click.Context]]:
    """Every command under `group`, depth first in `--help` order, each with its own context."""
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub = click.Context(command, info_name=name, parent=ctx, terminal_width=WIDTH, max_content_width=WIDTH)
        yield command, sub
        if isinstance(command, click.Group):
            yield from commands(command, sub)


def section(command: click.Command, ctx: click.Context) -> str:
    """One command's heading, help and environment variables."""
    options = [p for p in command.get_params(ctx) if isinstance(p, click.Option) and p.expose_value and not p.hidden]
    envvars = [
        f"`{envvar_name(ctx.auto_envvar_prefix, p)}`"
        for p in options
        if p.allow_from_autoenv and p.name and ctx.auto_envvar_prefix
    ]
    text = f"## {ctx.command_path}\n\n```text\n{command.get_help(ctx)}\n```\n"
    return text + (f"\nEnvironment variables: {', '.join(envvars)}.\n" if envvars else "")


def render() -> str:
    """The whole of docs/cli.md."""
    root = click.Context(cli, info_name=PROG, terminal_width=WIDTH, **cli.context_settings)
    parts = [HEADER, section(cli, root), *(section(c, ctx) for c, ctx in commands(cli, root))]
    return "\n".join(parts)


if __name__ == "__main__":
    click.echo(render(), nl=False)
