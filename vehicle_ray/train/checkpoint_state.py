"""A training run's checkpoint: where it stands (stage, epoch, history) and the weights, with the
optimizer state unless told otherwise, in fastai's save_model format."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastai.learner import load_model, save_model
from torch.nn.parallel import DistributedDataParallel

STATE_FILE = "state.json"
WEIGHTS_FILE = "learner.pth"


@dataclass
class Position:
    """Where a run stands: `epoch` epochs of stage `stage` are done (resume starts at epoch `epoch`)."""

    stage: int = 0
    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def checkpoint_due(epochs_done: int, every: int, stage_end: bool) -> bool:
    """Whether the epoch that just finished gets a checkpoint: every `every` epochs (counted over all
    stages) and at the end of every stage, so a resume never crosses a stage boundary backwards and
    the last epoch (a stage end) is always saved."""
    return stage_end or epochs_done % every == 0


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def write_checkpoint(directory: Path, learn, position: Position, with_opt: bool = True) -> None:
    """Weights (+ optimizer state: `with_opt`; fastai's save_model format) and the run position as JSON."""
    save_model(directory / WEIGHTS_FILE, unwrapped(learn.model), learn.opt, with_opt=with_opt)
    state = {"stage": position.stage, "epoch": position.epoch, "history": position.history, "with_opt": with_opt}
    (directory / STATE_FILE).write_text(json.dumps(state))


def read_checkpoint(directory: Path, learn, device) -> Position:
    """Load a checkpoint's weights (and optimizer state, when it has one) into `learn`; its position.
    Without a saved optimizer state the optimizer starts fresh at the restored epoch (--no-optimizer-state)."""
    state = json.loads((directory / STATE_FILE).read_text())
    load_model(directory / WEIGHTS_FILE, learn.model, learn.opt, with_opt=state.get("with_opt", True), device=device)
    return Position(stage=state["stage"], epoch=state["epoch"], history=state["history"])
