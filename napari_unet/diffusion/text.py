"""Text prompts: style tags ("dense", "dim") embedded as tokens for the cross-attention.

The encoder is pluggable: anything with ``dim`` and ``encode(tag_lists, device)`` returning
``(tokens (B, M, dim), valid (B, M) bool)`` can feed the network, so a pretrained text
encoder could replace the learned tag embeddings without touching the U-Net.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import torch
from torch import nn

from napari_unet.errors import UserError


class PromptEncoder(Protocol):
    """What the diffusion model needs from a text encoder."""

    dim: int

    def encode(self, tag_lists: Sequence[Sequence[str]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        ...


class TagEncoder(nn.Module):
    """Learned embeddings of a fixed tag vocabulary, plus one always-present "start" token.

    Token 0 is the start token (so every prompt has a key to attend to); tags are 1..V.
    An empty tag list (or a dropped condition) reads as the start token alone.
    """

    def __init__(self, vocabulary: Sequence[str], dim: int = 64, max_tags: int = 4) -> None:
        super().__init__()
        self.vocabulary = list(vocabulary)
        self.index = {tag: i + 1 for i, tag in enumerate(self.vocabulary)}
        self.dim, self.max_tags = dim, max_tags
        self.embed = nn.Embedding(len(self.vocabulary) + 1, dim)
        nn.init.normal_(self.embed.weight, std=0.5)

    def ids(self, tag_lists: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1 + max_tags) token ids and validity; unknown tags are a ``UserError``."""
        ids = torch.zeros(len(tag_lists), 1 + self.max_tags, dtype=torch.long)
        valid = torch.zeros_like(ids, dtype=torch.bool)
        valid[:, 0] = True
        for b, tags in enumerate(tag_lists):
            for j, tag in enumerate(list(tags)[: self.max_tags]):
                if tag not in self.index:
                    known = ", ".join(self.vocabulary) or "none"
                    raise UserError(f"unknown tag {tag!r}: this model knows {known}")
                ids[b, j + 1], valid[b, j + 1] = self.index[tag], True
        return ids, valid

    def encode(self, tag_lists: Sequence[Sequence[str]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, 1 + max_tags, dim) and their validity mask (B, 1 + max_tags)."""
        ids, valid = self.ids(tag_lists)
        return self.embed(ids.to(device)), valid.to(device)
