import pytest
import torch

from fusion_edu.points import PointTokenizer, farthest_point_sample, group_points
from fusion_edu.train import seeded


def test_farthest_point_sampling_spreads_the_seeds():
    line = torch.tensor([[[float(x), 0.0, 0.0] for x in range(10)]])
    assert farthest_point_sample(line, 3)[0].tolist() == [0, 9, 4]  # start, the far end, the middle
    clusters = torch.cat([torch.randn(1, 50, 3) * 0.01, torch.randn(1, 3, 3) * 0.01 + 10], dim=1)
    seeds = farthest_point_sample(clusters, 2)[0]
    assert seeds[0] == 0 and seeds[1] >= 50  # the three far points get a seed despite being few


def test_groups_hold_the_nearest_points_relative_to_their_seed():
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(2, 40, 3, generator=generator)
    seeds = farthest_point_sample(points, 5)
    groups = group_points(points, seeds, 6)  # b m k 3
    assert groups.shape == (2, 5, 6, 3)
    torch.testing.assert_close(groups[:, :, 0], torch.zeros(2, 5, 3))  # each seed is its own nearest
    for b in range(2):
        for m, seed in enumerate(seeds[b].tolist()):
            distances = (points[b] - points[b, seed]).norm(dim=1)
            expected = distances.sort().values[:6]
            torch.testing.assert_close(groups[b, m].norm(dim=1).sort().values, expected)


def test_point_tokens_do_not_depend_on_the_order_of_the_points():
    with seeded(0):
        tokenizer = PointTokenizer(num_seeds=8, group_size=4, embed_dim=16)
    points = torch.randn(1, 30, 3)
    seeds = farthest_point_sample(points, 8)
    order = torch.randperm(30)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(30)
    tokens, positions, xyz = tokenizer(points, seeds)
    shuffled_tokens, _, shuffled_xyz = tokenizer(points[:, order], inverse[seeds])
    torch.testing.assert_close(tokens, shuffled_tokens)
    torch.testing.assert_close(xyz, shuffled_xyz)
    assert positions.shape == tokens.shape == (1, 8, 16)


def test_bad_point_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"points of shape \(batch, n, 3\), got \(5, 3\)"):
        farthest_point_sample(torch.ones(5, 3), 2)
    with pytest.raises(ValueError, match=r"1 <= num_seeds <= the number of points \(0\), got 2"):
        farthest_point_sample(torch.ones(1, 0, 3), 2)
    with pytest.raises(ValueError, match=r"group_size <= the number of points \(5\), got 8"):
        group_points(torch.ones(1, 5, 3), torch.zeros(1, 2, dtype=torch.long), 8)
    tokenizer = PointTokenizer(num_seeds=2, group_size=3, embed_dim=4)
    points, seeds = torch.randn(1, 5, 3), torch.tensor([[0, 4]])
    with pytest.raises(ValueError, match=r"groups of shape \(1, 2, 3, 3\) .*, got \(1, 2, 4, 3\)"):
        tokenizer(points, seeds, group_points(points, seeds, 4))
    with pytest.raises(ValueError, match="groups are relative to their seeds"):
        tokenizer(points, None, group_points(points, seeds, 3))
