"""The one epoch loop both trainers run: resume, per-epoch checkpoint, best epoch, metrics.csv.

A trainer hands ``TrainingLoop.fit`` a ``Task``: one epoch of training, the validation score of
given weights, and the optimizer state a resume needs. ``Extension``s change how a network trains
(EMA, distillation, QAT, pruning: ``training/extensions.py``) through the hooks defined here; the
loop and the tasks call hooks, never a config flag.

Every epoch the loop

1. seeds torch's global RNG from (seed, epoch), so dropout and drop-path replay on resume (tasks
   derive their shuffling and augmentation generators from ``epoch_seed`` as well);
2. trains one epoch (``Task.train_epoch``), then lets the extensions finish it (QAT copies its
   weights back into the model);
3. validates the weights the extensions name (EMA: the average; else the model) and keeps a copy
   when their score is the best so far (on the main process only);
4. appends the epoch's row to metrics.csv and saves the training state (``last_state.pt``)
   atomically, so a run killed at any point resumes from its last finished epoch.

At the end the best epoch's weights are loaded back into the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..core import atomic
from ..core.errors import UsageError
from ..core.log import get_logger
from ..core.spec import ModelSpec
from ..models import checkpoint
from .common import format_row, write_metrics_csv
from .config import comparable_recipe, same_recipe
from .distributed import DistContext

logger = get_logger(__name__)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's randomness: a resumed epoch replays what the uninterrupted run drew."""
    return seed * 1009 + epoch


def plain_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of a module's weights, detached from training."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class Task(Protocol):
    """What a trainer supplies to the loop."""

    model: nn.Module  # the network saved every epoch and given the best epoch's weights at the end

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch; its metrics.csv columns (train losses, then ``lr``)."""
        ...

    def validate(self, judged: nn.Module) -> tuple[dict[str, float], float] | None:
        """The validation columns and the score (higher is better) of ``judged``'s weights; None without a validation split."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs besides the model's weights (optimizers, scaler), as training-state entries."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Extension:
    """One change to how a network trains, plugged in through hooks; each default changes nothing.

    The hooks run in this order: ``on_model`` (the network as built or loaded, before it moves to
    the device), ``on_start`` (before the optimizer: may return another module to train), then per
    step ``loss`` and ``after_step``, per epoch ``train_mode`` before and ``after_epoch`` after the
    steps, ``judged``/``runner`` for validation, and ``final_weights`` when no epoch was validated.
    """

    key: str | None = None  # its entry in the training state; None: it has nothing to resume
    allows_amp = True  # False: mixed precision is turned off while it trains

    def on_model(self, model: nn.Module) -> None:
        pass

    def on_start(self, model: nn.Module, net: nn.Module) -> nn.Module:
        return net

    def train_mode(self, net: nn.Module) -> bool:
        """Switch the trained module to training mode itself (True), or leave it to ``net.train()`` (False)."""
        return False

    def loss(self, logits: torch.Tensor, loss: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """The batch's loss, given the logits, the loss so far and the (augmented) uint8 pixels."""
        return loss

    def after_step(self, model: nn.Module) -> None:
        pass

    def after_epoch(self, model: nn.Module) -> None:
        pass

    def judged(self, model: nn.Module) -> nn.Module | None:
        """The module whose weights are validated and kept, if not the model's own."""
        return None

    def runner(self, judged: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """What computes the validation outputs, if not ``judged`` itself in eval mode."""
        return None

    def final_weights(self) -> dict[str, torch.Tensor] | None:
        """The weights to keep when no epoch was validated, if not the last epoch's."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Extensions:
    """A run's extensions, called in order; with none, every hook leaves training as it is."""

    def __init__(self, items: Iterable[Extension] = ()):
        self.items = list(items)

    def __iter__(self):
        return iter(self.items)

    @property
    def allow_amp(self) -> bool:
        return all(ext.allows_amp for ext in self.items)

    def on_model(self, model: nn.Module) -> None:
        for ext in self.items:
            ext.on_model(model)

    def on_start(self, model: nn.Module) -> nn.Module:
        """The module the optimizer trains: ``model`` unless an extension replaces it."""
        net = model
        for ext in self.items:
            net = ext.on_start(model, net)
        return net

    def train_mode(self, net: nn.Module) -> None:
        if not any(ext.train_mode(net) for ext in self.items):
            net.train()

    def loss(self, logits: torch.Tensor, loss: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        for ext in self.items:
            loss = ext.loss(logits, loss, pixels)
        return loss

    def after_step(self, model: nn.Module) -> None:
        for ext in self.items:
            ext.after_step(model)

    def after_epoch(self, model: nn.Module) -> None:
        for ext in self.items:
            ext.after_epoch(model)

    def judged(self, model: nn.Module) -> nn.Module:
        return next((m for ext in self.items if (m := ext.judged(model)) is not None), model)

    def runner(self, judged: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        return next((r for ext in self.items if (r := ext.runner(judged)) is not None), None) or judged.eval()

    def final_weights(self) -> dict[str, torch.Tensor] | None:
        return next((w for ext in self.items if (w := ext.final_weights()) is not None), None)

    def state_dict(self) -> dict[str, Any]:
        return {ext.key: ext.state_dict() for ext in self.items if ext.key}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for ext in self.items:
            if ext.key:
                ext.load_state_dict(state[ext.key])


class TrainingLoop:
    """Runs a Task for ``config.epochs`` epochs in ``config.out``; see the module docstring.

    ``config`` is a TrainConfig or SegmentConfig: the loop reads out, epochs, seed, resume and recipe().
    """

    def __init__(self, config: Any, context: DistContext, extensions: Extensions | None = None):
        self.config = config
        self.run_dir = Path(config.out)
        self.context = context
        self.extensions = extensions if extensions is not None else Extensions()
        self.best_score = -1.0  # validation score of the best epoch so far
        self.best_weights: dict[str, torch.Tensor] | None = None

    def fit(self, task: Task) -> list[dict[str, Any]]:
        """Train (or finish training) ``task``; returns the metrics.csv rows."""
        config = self.config
        start_epoch, history = self._resume(task)
        for epoch in range(start_epoch, config.epochs):
            torch.manual_seed(epoch_seed(config.seed, epoch))  # dropout and drop-path replay on resume
            row: dict[str, Any] = {"epoch": epoch + 1} | task.train_epoch(epoch)
            self.extensions.after_epoch(task.model)
            if self.context.is_main:
                self._validate(task, row)
            history.append(row)
            self._end_epoch(task, epoch, history, row)
        weights = self.best_weights if self.best_weights is not None else self.extensions.final_weights()
        if weights is not None:
            task.model.load_state_dict(weights)
        return history

    def _validate(self, task: Task, row: dict[str, Any]) -> None:
        judged = self.extensions.judged(task.model)
        scored = task.validate(judged)
        if scored is None:
            return
        columns, score = scored
        row.update(columns)
        if score > self.best_score:
            self.best_score = score
            self.best_weights = plain_state(judged)

    def _recipe(self) -> dict[str, Any]:
        return comparable_recipe(self.config.recipe())

    def _resume(self, task: Task) -> tuple[int, list[dict[str, Any]]]:
        if not self.config.resume:
            return 0, []
        state = checkpoint.load_training_state(self.run_dir)
        if state is None:
            logger.info(f"--resume: no {checkpoint.LAST_STATE} in {self.run_dir}; starting from epoch 1")
            return 0, []
        if not same_recipe(state.get("recipe") or {}, self._recipe(), type(self.config)):
            raise UsageError(
                f"--resume with a different recipe than the interrupted run in {self.run_dir}",
                fix="resume with the same arguments, or use a new --out",
            )
        task.model.load_state_dict(state["model"])
        task.load_state_dict(state)
        self.extensions.load_state_dict(state)
        self.best_score = float(state["best_score"])
        self.best_weights = state.get("best_weights") or None
        logger.info(f"resumed from {self.run_dir / checkpoint.LAST_STATE} after epoch {state['epoch'] + 1}")
        return int(state["epoch"]) + 1, list(state["history"])

    def _end_epoch(self, task: Task, epoch: int, history: list[dict[str, Any]], row: dict[str, Any]) -> None:
        logger.info(f"epoch {epoch + 1}/{self.config.epochs}: {format_row(row)}")
        if self.context.is_main:
            write_metrics_csv(self.run_dir / "metrics.csv", history)
            state = {
                "epoch": epoch,
                "history": history,
                **task.state_dict(),
                "best_score": self.best_score,
                "best_weights": self.best_weights or {},
                "recipe": self._recipe(),
                **self.extensions.state_dict(),
            }
            checkpoint.save_training_state(task.model, state, self.run_dir)
        self.context.barrier()


def save_run(model: nn.Module, spec: ModelSpec, run_dir: Path) -> None:
    """The finished run: model.safetensors and spec.json (with the metrics), and metrics.json."""
    checkpoint.save_model(model, spec, run_dir)
    atomic.write_text(run_dir / "metrics.json", json.dumps(spec.metrics, indent=2))
