"""Trainable projection heads on frozen base embeddings (torch; imported only when training or applying).

Each head is residual to the base space: ``y = normalise(x + f(x))`` with the last layer of ``f``
zero-initialised, so an untrained adapter reproduces the base model exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

HEAD_KINDS = ("linear", "mlp")
MAX_LOGIT_SCALE = math.log(100.0)


class ResidualHead(nn.Module):
    """``x -> normalise(x + f(x))`` with ``f`` linear or a 2-layer MLP whose output layer starts at zero."""

    def __init__(self, dim: int, kind: str = "linear", hidden_dim: int = 0) -> None:
        super().__init__()
        if kind == "linear":
            self.delta: nn.Module = nn.Linear(dim, dim)
            last = self.delta
        else:
            last = nn.Linear(hidden_dim or dim, dim)
            self.delta = nn.Sequential(nn.Linear(dim, hidden_dim or dim), nn.GELU(), last)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x + self.delta(x), dim=-1)

    def output_layer(self) -> nn.Linear:
        """The layer that starts at zero: while it is zero the head is the identity, whatever the layers before."""
        return self.delta if isinstance(self.delta, nn.Linear) else self.delta[-1]


class AdapterHeads(nn.Module):
    """An image head, a text head and the learnable temperature (stored as a log logit scale)."""

    def __init__(self, dim: int, kind: str = "linear", hidden_dim: int = 0) -> None:
        super().__init__()
        self.image = ResidualHead(dim, kind, hidden_dim)
        self.text = ResidualHead(dim, kind, hidden_dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def identity_parameters(self) -> list[nn.Parameter]:
        """The weights that make the adapter the base model when zero: the output layers of both heads."""
        return [*self.image.output_layer().parameters(), *self.text.output_layer().parameters()]

    def scale(self) -> torch.Tensor:
        """The logit scale (1 / temperature), clamped as in CLIP."""
        return self.log_scale.clamp(max=MAX_LOGIT_SCALE).exp()


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, groups: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE; rows of the same group are all positives (duplicate captions are not negatives)."""
    logits = scale * image @ text.T
    positive = groups[:, None] == groups[None, :]
    return 0.5 * (_multi_positive_nll(logits, positive) + _multi_positive_nll(logits.T, positive.T))


def _multi_positive_nll(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    log_prob = logits.log_softmax(dim=1)
    return -(log_prob.masked_fill(~positive, float("-inf")).logsumexp(dim=1)).mean()
