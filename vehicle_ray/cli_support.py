"""Click building blocks for `vehicle-ray`: old spellings kept as hidden aliases, environment variables
named after the options, `--help` grouped by topic, and stdout kept for one JSON object with `--json`.

Why aliases: scripts, cron lines and manifests written against earlier spellings (`score --output`,
`--batch-size`, `--no-tta`, a positional `runs OUTPUT`) keep working, while `--help` and docs/cli.md
teach one vocabulary across commands.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from typing import Any, Iterator, Mapping, Sequence

import click

from vehicle_ray.log import PACKAGE

ENVVAR_PREFIX = "VEHICLE_RAY"  # VEHICLE_RAY_<COMMAND>_<OPTION>, e.g. VEHICLE_RAY_SCORE_MODEL


def _long_name(decl: str) -> str:
    """`--tta-max` -> `tta_max`; the first spelling of a `--x/--no-x` pair."""
    return decl.split("/")[0].strip().lstrip("-").replace("-", "_")


class Option(click.Option):
    """A click option with hidden alias spellings: they parse to the same value, `--help` shows only the
    primary names. Its environment variable is named after its first long option (`--csv` gives
    VEHICLE_RAY_TRAIN_CSV whatever the Python parameter is called)."""

    def __init__(self, param_decls: Sequence[str], aliases: Sequence[str] = (), **attrs: Any) -> None:
        decls = list(param_decls)
        if not any(d.isidentifier() for d in decls):  # else click would name it after its longest alias
            decls.append(_long_name(decls[0]))
        super().__init__([*decls, *aliases], **attrs)
        self.aliases = frozenset(aliases)
        self.env_name = _long_name(param_decls[0]).upper()

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        every = self.opts, self.secondary_opts
        self.opts = [o for o in self.opts if o not in self.aliases]
        self.secondary_opts = [o for o in self.secondary_opts if o not in self.aliases]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts, self.secondary_opts = every

    def auto_envvar(self, prefix: str) -> str:
        """The variable that sets this option under a command whose auto_envvar_prefix is `prefix`."""
        return f"{prefix}_{self.env_name}"

    def resolve_envvar_value(self, ctx: click.Context) -> str | None:
        if self.envvar is None and self.allow_from_autoenv and ctx.auto_envvar_prefix:
            return os.environ.get(self.auto_envvar(ctx.auto_envvar_prefix)) or None
        return super().resolve_envvar_value(ctx)


def envvar_name(prefix: str, param: click.Option) -> str:
    """The variable that sets `param` under a command whose auto_envvar_prefix is `prefix`."""
    if param.envvar:
        return param.envvar if isinstance(param.envvar, str) else param.envvar[0]
    return param.auto_envvar(prefix) if isinstance(param, Option) else f"{prefix}_{(param.name or '').upper()}"


class HiddenArgument(click.Argument):
    """A positional argument kept for old command lines only: not in the usage line."""

    def get_usage_pieces(self, ctx: click.Context) -> list[str]:
        return []


class TopicCommand(click.Command):
    """`--help` in sections (`topics`: title -> parameter names, in order); parameters no topic names
    (the help option among them) come last under "Other options"."""

    def __init__(self, *args: Any, topics: Mapping[str, Sequence[str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.topics = topics

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        records = {p.name: r for p in self.get_params(ctx) if (r := p.get_help_record(ctx)) is not None}
        for title, names in [*self.topics.items(), ("Other options", list(records))]:
            rows = [records.pop(n) for n in names if n in records]
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


@contextlib.contextmanager
def human_output_to_stderr(enabled: bool) -> Iterator[None]:
    """With `--json`, stdout carries only the JSON summary: log lines, progress and the output Ray
    forwards from its workers go to stderr meanwhile."""
    if not enabled:
        yield
        return
    handlers = [
        h
        for h in logging.getLogger(PACKAGE).handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    streams = [h.stream for h in handlers]
    for handler in handlers:
        handler.setStream(sys.stderr)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        for handler, stream in zip(handlers, streams, strict=True):
            handler.setStream(stream)


def echo_json(payload: Mapping[str, Any]) -> None:
    """One JSON object on one line of stdout (paths and other non-JSON values as strings)."""
    click.echo(json.dumps(payload, default=str))


def report_plan(plan: Mapping[str, Any], as_json: bool) -> None:
    """A --dry-run plan: one JSON object, or one `key  value` line per entry for people."""
    if as_json:
        echo_json(plan)
        return
    click.echo(f"dry run of {plan['command']}: nothing was started or written")
    for key, value in plan.items():
        if key not in ("dry_run", "command"):
            click.echo(f"  {key:26s} {json.dumps(value, default=str) if isinstance(value, (dict, list)) else value}")
