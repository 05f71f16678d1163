"""Point-cloud tokens for a transformer: seed points, their neighbourhoods, a small PointNet per group.

A point cloud has no grid to cut into patches, so a point transformer makes its tokens the way
PointNet++ and the detectors TokenFusion builds on (Group-Free 3D, with a PointNet++ backbone) do:

1. **seeds** — ``num_seeds`` points spread over the cloud by farthest point sampling (each next seed
   is the point farthest from all seeds so far), so sparse regions get seeds too;
2. **groups** — each seed's ``group_size`` nearest points, in coordinates relative to the seed;
3. **a mini-PointNet** — a shared MLP on every point of a group, then a max over the group (a
   symmetric function: the token does not depend on the order of the points), one token per seed;
4. **3-D positional embeddings** — an MLP of the seed's xyz, added to the token (Group-Free's
   learned position embedding), as a ViT adds its patch positions.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PointTokenizer", "farthest_point_sample", "group_points"]


def farthest_point_sample(points: Tensor, num_seeds: int) -> Tensor:
    """Indices ``(b m)`` of ``num_seeds`` seeds of ``points (b n 3)`` by farthest point sampling.

    Deterministic: the first seed is point 0; each next one is the point whose distance to its nearest
    seed so far is largest.
    """
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"expected points of shape (batch, n, 3), got {tuple(points.shape)}")
    batch, count, _ = points.shape
    if not 0 < num_seeds <= count:
        raise ValueError(f"need 1 <= num_seeds <= the number of points ({count}), got {num_seeds}")
    seeds = torch.zeros(batch, num_seeds, dtype=torch.long, device=points.device)
    nearest = torch.full((batch, count), float("inf"), device=points.device)  # distance² to the seeds
    rows = torch.arange(batch, device=points.device)
    for index in range(1, num_seeds):
        latest = points[rows, seeds[:, index - 1]]  # b 3
        nearest = torch.minimum(nearest, ((points - latest[:, None]) ** 2).sum(-1))
        seeds[:, index] = nearest.argmax(dim=1)
    return seeds


def group_points(points: Tensor, seeds: Tensor, group_size: int) -> Tensor:
    """The ``group_size`` nearest points of each seed, relative to it: ``(b m k 3)``.

    ``points (b n 3)``; ``seeds (b m)`` indexes them.  A seed is its own nearest point, so each group
    holds its seed at the origin.
    """
    if not 0 < group_size <= points.shape[1]:
        raise ValueError(f"need 1 <= group_size <= the number of points ({points.shape[1]}), "
                         f"got {group_size}")
    rows = torch.arange(len(points), device=points.device)[:, None]
    centres = points[rows, seeds]  # b m 3
    nearest = torch.cdist(centres, points).topk(group_size, dim=-1, largest=False).indices  # b m k
    return points[rows[..., None], nearest] - centres[:, :, None]


class PointTokenizer(nn.Module):
    """Seeds, groups, a mini-PointNet per group and 3-D positional embeddings: ``(b n 3)`` → ``(b m d)``."""

    def __init__(self, num_seeds: int, group_size: int, embed_dim: int, hidden_dim: int = 64) -> None:
        super().__init__()
        self.num_seeds, self.group_size = num_seeds, group_size
        self.pointnet = nn.Sequential(nn.Linear(3, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embed_dim))
        self.position = nn.Sequential(nn.Linear(3, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, embed_dim))

    def forward(self, points: Tensor, seeds: Tensor | None = None, groups: Tensor | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """Tokens ``(b m d)``, their 3-D positional embeddings ``(b m d)`` and the seeds' xyz ``(b m 3)``.

        ``seeds (b m)`` indexes ``points (b n 3)``; by default farthest point sampling picks them.
        ``groups (b m k 3)``, the seeds' neighbourhoods, may come computed once with the data (a fixed cloud
        has fixed groups); they must be ``group_points(points, seeds, group_size)`` of these very points and
        seeds: only their shape is checked.  The tokens do not include the positions: the model adds them
        (and re-adds them with RPA).
        """
        if groups is not None and seeds is None:
            raise ValueError("groups are relative to their seeds: pass the seeds they were made from")
        if seeds is None:
            seeds = farthest_point_sample(points, self.num_seeds)
        if groups is None:
            groups = group_points(points, seeds, self.group_size)  # b m k 3
        elif groups.shape != (*seeds.shape, self.group_size, 3):
            raise ValueError(f"expected groups of shape {(*seeds.shape, self.group_size, 3)} (batch, seeds, "
                             f"group_size, 3), got {tuple(groups.shape)}: make them with this tokenizer's "
                             f"group_size, {self.group_size}")
        features = self.pointnet(groups).max(dim=2).values  # b m k d -> b m d: max over each group
        xyz = points[torch.arange(len(points), device=points.device)[:, None], seeds]
        return features, self.position(xyz), xyz
