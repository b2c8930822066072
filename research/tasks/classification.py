"""``classification``: inputs [B, *input_shape] float, labels [B] int (-1: unlabeled), logits [B, C].

Exactly the workbench's behaviour before tasks existed: the model is called on
the inputs, losses see the logits as they are, validation reports accuracy and
NLL each epoch, a finished run is judged by ``research.evaluate.classification_metrics``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from research.evaluate import classification_metrics, predict
from research.models.outputs import select_output
from research.tasks import Task, Toy, register_task


@register_task("classification")
class Classification(Task):
    validation_metric = "accuracy"
    direction = "maximize"
    epoch_metric_names = ("accuracy", "nll")
    metric_names = ("accuracy", "errors", "nll", "ece")
    teacher_metric_names = ("agreement", "kl_to_teacher")

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        # A tuple/dict output is refused here in one clear line (how to pick the logits), not
        # deep inside a loss; run teachers are already wrapped (research.models.outputs.LogitsOf).
        return select_output(model(x), what=f"the model {type(model).__name__}", how="teachers.<i>.output")

    def loss_rows(self, logits: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        return logits, y  # one row per sample already; unlabeled rows (-1) are the losses' business

    def predict(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, *, batch_size: int = 1024,
                device: torch.device | str | None = None) -> torch.Tensor:
        return predict(model, x, batch_size=batch_size, device=device)

    def epoch_metrics(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                      device: torch.device | str | None = None) -> dict[str, float]:
        m = classification_metrics(self.predict(model, x, device=device), y)
        return {k: m[k] for k in self.epoch_metric_names}

    def evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, teacher_logits: torch.Tensor | None = None,
                 batch_size: int = 1024, ece_bins: int = 15) -> dict[str, float]:
        return self.evaluate_logits(self.predict(model, x, batch_size=batch_size), y, teacher_logits=teacher_logits, ece_bins=ece_bins)

    def evaluate_logits(self, logits: torch.Tensor, y: torch.Tensor, *, teacher_logits: torch.Tensor | None = None,
                        ece_bins: int = 15) -> dict[str, float]:
        return classification_metrics(logits, y, teacher_logits=teacher_logits, ece_bins=ece_bins)

    def example_input(self, input_shape: Sequence[int], batch_size: int = 1) -> torch.Tensor:
        return torch.randn(batch_size, *input_shape)

    def toy(self, *, seed: int = 0, n: int = 16) -> Toy:
        from research.models import build_model

        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 12, generator=g)
        y = torch.randint(0, 3, (n,), generator=g)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_model("mlp", input_shape=(12,), num_classes=3, widths=[8])
        return Toy(model, x, y, (12,), 3)
