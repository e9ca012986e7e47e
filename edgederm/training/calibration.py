"""Temperature scaling (Guo et al., 2017) fitted on validation logits, then folded into the head.

Dividing the last linear layer's weight and bias by T gives logits/T exactly, so every exported
artifact outputs calibrated probabilities with a plain softmax and no runtime needs to know T.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """The T > 0 that minimises validation NLL of softmax(logits / T)."""
    if len(logits) == 0:
        return 1.0
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    return float(np.clip(temperature, 0.05, 20.0))


@torch.no_grad()
def fold_temperature(classifier: nn.Linear, temperature: float) -> None:
    classifier.weight.div_(temperature)
    if classifier.bias is not None:
        classifier.bias.div_(temperature)
