"""Position encodings, a choice of each backbone: 1-D rotary for text, 2-D rotary or learned absolute
positions for images.

Rotary encodings produce (cos, sin) tables [batch or 1, seq, head_dim] that attention applies to q and k with
`apply_rotary`; learned absolute positions are added to the patch embeddings instead (attention then gets
`position_embeddings=None` and rotates nothing).

- `Rotary` (Su et al., 2021, "RoFormer", eq. 34): angle θ_i·p for integer position p, θ_i = base^(-2i/d).
- `Rotary2D`: axial 2-D RoPE (Heo et al., 2024, "Rotary Position Embedding for Vision Transformer",
  RoPE-Axial, eq. 11): the first half of the frequency pairs rotates by the patch row, the second half by the
  patch column; a token without a grid position (the CLS token) is not rotated. With `interpolate=True`
  another grid's coordinates are rescaled to the training grid's range (position interpolation).
- `LearnedPositions`: one learned vector per patch (and one for the CLS token), as in ViT (Dosovitskiy et
  al., 2021); for another grid size the patch table is resized bicubically, as transformers' ViT does.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import initialization as init


def rope_inv_freq(dim: int, theta: float) -> torch.Tensor:
    """θ_i = theta^(-2i/dim) for i < dim/2: the rotation frequency of each pair of channels."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))


class Rotary(nn.Module):
    """1-D rotary position embedding: cos/sin tables for integer positions.

    `inv_freq` is a non-persistent buffer: it is derived from the config, never stored in checkpoints.
    """

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self) -> torch.Tensor:
        return rope_inv_freq(self.head_dim, self.theta)

    def init_plait_weights(self) -> None:
        init.copy_(self.inv_freq, self.compute_inv_freq())

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)
        angles = torch.cat((freqs, freqs), dim=-1)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)


class Rotary2D(nn.Module):
    """Axial 2-D rotary embedding over a patch grid; `head_dim` must be a multiple of 4.

    `forward(x, grid, prefix)` returns tables for `prefix` unrotated tokens (CLS) followed by the patches of a
    `grid` = (rows, cols) raster, row-major. Positions are scaled to `base_grid` when `interpolate` is set.
    """

    def __init__(self, head_dim: int, theta: float, base_grid: tuple[int, int]):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta
        self.base_grid = base_grid
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self) -> torch.Tensor:
        return rope_inv_freq(self.head_dim // 2, self.theta)  # per axis: head_dim / 4 frequencies

    def init_plait_weights(self) -> None:
        init.copy_(self.inv_freq, self.compute_inv_freq())

    @torch.no_grad()
    def forward(
        self, x: torch.Tensor, grid: tuple[int, int], prefix: int = 0, interpolate: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = grid
        r = torch.arange(rows, device=x.device, dtype=torch.float)
        c = torch.arange(cols, device=x.device, dtype=torch.float)
        if interpolate:
            r = r * (self.base_grid[0] / rows)
            c = c * (self.base_grid[1] / cols)
        r, c = torch.meshgrid(r, c, indexing="ij")
        inv_freq = self.inv_freq.to(x.device)
        freqs = torch.cat((r.reshape(-1, 1) * inv_freq, c.reshape(-1, 1) * inv_freq), dim=-1)
        freqs = torch.cat((freqs.new_zeros(prefix, freqs.shape[1]), freqs))  # angle 0: no rotation
        angles = torch.cat((freqs, freqs), dim=-1)[None]
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)


class LearnedPositions(nn.Module):
    """Learned absolute positions for `prefix` leading tokens plus a `grid` of patches, added to the input."""

    def __init__(self, hidden_size: int, grid: tuple[int, int], prefix: int, std: float):
        super().__init__()
        self.grid, self.prefix, self.std = grid, prefix, std
        self.weight = nn.Parameter(torch.empty(1, prefix + grid[0] * grid[1], hidden_size))
        self.init_plait_weights()

    def init_plait_weights(self) -> None:
        init.trunc_normal_(self.weight, std=self.std)

    def forward(self, x: torch.Tensor, grid: tuple[int, int], interpolate: bool = False) -> torch.Tensor:
        if tuple(grid) == tuple(self.grid):
            return x + self.weight.to(x.dtype)
        if not interpolate:
            raise ValueError(
                f"the image gives a {grid[0]}x{grid[1]} patch grid but the learned positions were trained on "
                f"{self.grid[0]}x{self.grid[1]}; pass interpolate_pos_encoding=True to resize them"
            )
        head, patches = self.weight[:, : self.prefix], self.weight[:, self.prefix :]
        patches = patches.reshape(1, *self.grid, -1).permute(0, 3, 1, 2)
        patches = nn.functional.interpolate(patches.float(), size=grid, mode="bicubic", align_corners=False)
        patches = patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(head.dtype)
        return x + torch.cat((head, patches), dim=1).to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate `q`, `k` of shape [batch, heads, seq, head_dim] by tables of shape [batch, seq, head_dim]."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
