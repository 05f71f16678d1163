"""One diagram per mechanism of the course, drawn by code so that it is versioned, diffable and
regenerable (``python -m fusion_edu.diagrams notebooks/figures`` writes them as SVG).

Each function returns a matplotlib ``Figure``; a notebook shows it where the mechanism is introduced.
Where a diagram shows what a mechanism computes (which tokens are substituted, which patch a point
falls in), the package's own functions compute it, so the picture cannot drift from the code:

- ``vit_tokens``: an image cut into patches, embedded, a class token and positions (ViT, Eq. 1);
- ``fusion_baselines``: late fusion, token concatenation and input fusion (notebook 02);
- ``token_substitution``: TokenFusion's scores, the threshold and the substitution, with RPA (Eqs. 4-6);
- ``point_to_patch``: a pinhole camera sends a point token to an image patch (Sec. 3.5, Eqs. 8-9);
- ``cls_cross_attention``: CrossViT's CLS token as the only query over the other branch (Sec. 3.4);
- ``bottleneck_patterns``: MBT's four fusions, who may read whom, and the fusion layer L_f (Sec. 3);
- ``pwam_and_gate``: LAVT's pixel-word attention and language gate inside the encoder (Sec. 3.2-3.3).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyBboxPatch, Polygon, Rectangle

from .camera import intrinsics, project_points
from .tokenfusion import preallocate, substitute_tokens
from .tokenfusion_heterogeneous import project_to_patches

__all__ = ["DIAGRAMS", "bottleneck_patterns", "cls_cross_attention", "fusion_baselines", "point_to_patch",
           "pwam_and_gate", "token_substitution", "vit_tokens", "write_diagrams"]

COLOURS = {"rgb": "#e07b39", "depth": "#3b78c2", "fused": "#8e5ea2", "language": "#3e9b5a",
           "cls": "#555555", "position": "#d9d9d9", "layer": "#f3f0e6", "faint": "#9a9a9a"}
TOKEN = 0.3  # side of a token square, in inches
GAP = 0.08  # between neighbouring tokens
FONT = 9
SMALL = 7.5


def _canvas(width: float, height: float) -> tuple[Figure, plt.Axes]:
    """A blank figure whose data coordinates are inches: x in [0, width], y in [0, height]."""
    fig = plt.figure(figsize=(width, height), dpi=110)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set(xlim=(0, width), ylim=(0, height))
    ax.set_aspect("equal")
    ax.axis("off")
    return fig, ax


def _box(ax: plt.Axes, x: float, y: float, width: float, height: float, text: str = "",
         colour: str = COLOURS["layer"], fontsize: float = FONT, dashed: bool = False) -> None:
    ax.add_patch(FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0,rounding_size=0.08",
                                facecolor=colour, edgecolor="#333333", linewidth=0.8,
                                linestyle="--" if dashed else "-"))
    ax.text(x + width / 2, y + height / 2, text, ha="center", va="center", fontsize=fontsize)


def _token(ax: plt.Axes, x: float, y: float, colour: str, label: str = "", size: float = TOKEN,
           hatch: str | None = None, edge: str = "#333333") -> None:
    """One token as a square with its lower left corner at (x, y)."""
    ax.add_patch(Rectangle((x, y), size, size, facecolor=colour, edgecolor=edge, linewidth=0.8, hatch=hatch))
    if label:
        ax.text(x + size / 2, y + size / 2, label, ha="center", va="center", fontsize=SMALL - 1,
                color="white")


def _token_row(ax: plt.Axes, x: float, y: float, colours: Sequence[str], labels: Sequence[str] = (),
               size: float = TOKEN) -> list[float]:
    """Tokens side by side from (x, y); returns their centres' x."""
    centres = []
    for index, colour in enumerate(colours):
        left = x + index * (size + GAP)
        _token(ax, left, y, colour, labels[index] if index < len(labels) else "", size)
        centres.append(left + size / 2)
    return centres


def _arrow(ax: plt.Axes, start: tuple[float, float], end: tuple[float, float], text: str = "",
           colour: str = "#333333", curve: float = 0.0, text_at: tuple[float, float] | None = None,
           dashed: bool = False, both_ways: bool = False) -> None:
    ax.annotate("", xy=end, xytext=start,
                arrowprops={"arrowstyle": "<|-|>" if both_ways else "-|>", "color": colour, "linewidth": 1.0,
                            "shrinkA": 1, "shrinkB": 1, "linestyle": "--" if dashed else "-",
                            "connectionstyle": f"arc3,rad={curve}"})
    if text:
        x, y = text_at or ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.12)
        ax.text(x, y, text, ha="center", va="bottom", fontsize=SMALL)


def _title(ax: plt.Axes, x: float, y: float, text: str) -> None:
    ax.text(x, y, text, ha="center", va="center", fontsize=FONT + 1, fontweight="bold")


# ViT (notebook 01) ------------------------------------------------------------------------------

PATCH_TONES = ("#f2c4a0", "#e89a6a", "#d9773f", "#b85a2a", "#f7dcc5", "#cf8a5a", "#a94f22", "#eab08a",
               "#dd8350")


def vit_tokens() -> Figure:
    """ViT Sec. 3.1, Eq. 1: z_0 = [x_class; x_p^1 E; ...; x_p^N E] + E_pos, then L blocks and a head."""
    fig, ax = _canvas(11.0, 3.0)
    grid, side = 3, 0.45
    for row in range(grid):
        for column in range(grid):
            tone = PATCH_TONES[row * grid + column]
            ax.add_patch(Rectangle((0.3 + column * side, 0.9 + (grid - 1 - row) * side), side, side,
                                   facecolor=tone, edgecolor="white", linewidth=1.5))
    ax.text(0.3 + grid * side / 2, 0.6, "image, H × W × C\ncut into N = HW/P² patches", ha="center",
            va="top", fontsize=SMALL)
    _arrow(ax, (1.75, 1.55), (2.35, 1.55), "flatten")
    strip_x = [2.45 + index * 0.22 for index in range(grid * grid)]
    for x, tone in zip(strip_x, PATCH_TONES, strict=True):
        ax.add_patch(Rectangle((x, 1.05), 0.16, 1.0, facecolor=tone, edgecolor="#333333", linewidth=0.6))
    ax.text(2.45 + len(strip_x) * 0.11, 0.9, "$x_p \\in \\mathbb{R}^{N \\times P^2 C}$", ha="center",
            va="top", fontsize=FONT)
    _arrow(ax, (4.45, 1.55), (5.05, 1.55), "× E")
    token_colours = [COLOURS["cls"]] + [COLOURS["rgb"]] * (grid * grid)
    centres = _token_row(ax, 5.15, 1.7, token_colours, ["cls"], size=0.24)
    for centre in centres:
        _token(ax, centre - 0.12, 1.1, COLOURS["position"], size=0.24)
        ax.text(centre, 1.53, "+", ha="center", va="center", fontsize=SMALL)
    ax.text(centres[-1] + 0.25, 1.22, "$E_{pos}$", ha="left", va="center", fontsize=SMALL)
    ax.text((centres[0] + centres[-1]) / 2, 0.9, "$z_0$: N + 1 tokens of width D (Eq. 1)", ha="center",
            va="top", fontsize=FONT)
    _arrow(ax, (8.25, 1.55), (8.6, 1.55))
    _box(ax, 8.65, 0.85, 1.3, 1.4, "L blocks\nz' = z + MSA(LN z)\nz + MLP(LN z')\n(Eqs. 2–3)", fontsize=SMALL)
    _arrow(ax, (9.95, 1.55), (10.2, 1.55))
    ax.text(10.25, 1.55, "head:\neach token\n→ logits of\nits P × P\npixels", ha="left", va="center",
            fontsize=SMALL)
    _title(ax, 5.5, 2.75, "A ViT reads an image as a sequence of patch tokens")
    return fig


# Fusion baselines (notebook 02) ----------------------------------------------------------------

def fusion_baselines() -> Figure:
    """Where two aligned modalities meet: after two encoders, in one sequence of 2N tokens, or summed
    into N tokens (TokenFusion Sec. 3.1; ViLT-style concatenation; Eqs. 2–3 with h = identity)."""
    fig, ax = _canvas(11.0, 3.6)
    count, middle = 4, 1.5 * (TOKEN + GAP) + TOKEN / 2  # tokens per row; the middle of a row from its left
    # late fusion: two encoders, predictions combined
    for left, modality, name in ((0.3, "rgb", "RGB"), (1.85, "depth", "depth")):
        _token_row(ax, left, 0.7, [COLOURS[modality]] * count)
        _box(ax, left - 0.1, 1.45, 1.35, 0.45, f"ViT ({name})", COLOURS[modality] + "55")
        _arrow(ax, (left + middle, 0.7 + TOKEN), (left + middle, 1.45))
        _arrow(ax, (left + middle, 1.9), (1.65 + (left - 1.075) * 0.4, 2.35))
    _box(ax, 0.9, 2.35, 1.5, 0.4, "learned ensemble", COLOURS["fused"] + "55", fontsize=SMALL)
    _title(ax, 1.65, 3.3, "late fusion")
    ax.text(1.65, 0.45, "two encoders of N tokens; the modalities\nmeet only in the prediction", ha="center",
            va="top", fontsize=SMALL)
    # token concatenation: one sequence of 2N tokens
    row = _token_row(ax, 4.05, 0.7, [COLOURS["rgb"]] * count + [COLOURS["depth"]] * count, size=0.26)
    ax.text(4.05 - 0.1, 0.83, "[", ha="right", va="center", fontsize=16)
    ax.text(row[-1] + 0.2, 0.83, "]", ha="left", va="center", fontsize=16)
    _box(ax, 4.0, 1.45, 2.95, 0.45, "one shared ViT over 2N tokens", COLOURS["fused"] + "55")
    _arrow(ax, ((row[0] + row[-1]) / 2, 1.0), ((row[0] + row[-1]) / 2, 1.45))
    _box(ax, 4.4, 2.35, 2.15, 0.4, "a head per modality", COLOURS["layer"], fontsize=SMALL)
    _arrow(ax, (5.475, 1.9), (5.475, 2.35))
    _title(ax, 5.475, 3.3, "token concatenation")
    ax.text(5.475, 0.45, "alignment-agnostic: own embeddings, positions\nand type per modality; "
            "attention over (2N)²", ha="center", va="top", fontsize=SMALL)
    # input fusion: aligned tokens summed
    rgb = _token_row(ax, 8.0, 1.0, [COLOURS["rgb"]] * count)
    _token_row(ax, 8.0, 0.5, [COLOURS["depth"]] * count)
    for x in rgb:
        ax.text(x, 0.5 + TOKEN + 0.1, "+", ha="center", va="center", fontsize=FONT)
    _token_row(ax, 8.0, 1.75, [COLOURS["fused"]] * count)
    _arrow(ax, (8.0 + middle, 1.0 + TOKEN), (8.0 + middle, 1.75), "e = e¹ + e²",
           text_at=(8.0 + middle + 0.95, 1.4))
    _box(ax, 7.85, 2.35, 1.75, 0.4, "one ViT over N tokens", COLOURS["fused"] + "55", fontsize=SMALL)
    _arrow(ax, (8.0 + middle, 1.75 + TOKEN), (8.0 + middle, 2.35))
    _title(ax, 8.73, 3.3, "input fusion")
    ax.text(8.73, 0.3, "alignment-aware: token i of RGB and of\ndepth show the same place; N tokens",
            ha="center", va="top", fontsize=SMALL)
    _legend(ax, 10.1, 1.9, {"rgb": "RGB", "depth": "depth", "fused": "fused"})
    return fig


def _legend(ax: plt.Axes, x: float, y: float, names: dict[str, str]) -> None:
    """A token of each colour in ``names`` (colour key: what it stands for), one under another."""
    for index, (colour, name) in enumerate(names.items()):
        _token(ax, x, y - index * 0.35, COLOURS[colour], size=0.2)
        ax.text(x + 0.28, y - index * 0.35 + 0.1, name, va="center", fontsize=SMALL)


# TokenFusion (notebook 03a) --------------------------------------------------------------------

THRESHOLD = 0.02  # θ, the official value
EXAMPLE_SCORES = {"rgb": (0.9, 0.7, 0.01, 0.8, 0.6, 0.85),  # token 2: glare
                  "depth": (0.75, 0.8, 0.6, 0.005, 0.9, 0.7)}  # token 3: a depth hole


def token_substitution() -> Figure:
    """Eqs. 4–6 and RPA (Sec. 3.3): score every token, substitute those below θ by the aligned token of
    the other modality, re-add the positions, and scale each token's attention update by its score.
    Which tokens are substituted is computed by ``substitute_tokens``."""
    modalities = list(EXAMPLE_SCORES)
    count = len(EXAMPLE_SCORES["rgb"])
    # token j of modality m is the vector [m, j], so where each new token came from can be read back
    tokens = {m: torch.tensor([[[float(index), float(j)] for j in range(count)]])
              for index, m in enumerate(modalities)}
    scores = {m: torch.tensor([values]) for m, values in EXAMPLE_SCORES.items()}
    new_tokens, _ = substitute_tokens(tokens, scores, THRESHOLD, preallocate(count, modalities))
    fig, ax = _canvas(11.0, 3.9)
    rows = {"rgb": 2.35, "depth": 0.7}
    for m, y in rows.items():
        ax.text(0.15, y + TOKEN / 2, f"$e^l$ {m}", ha="left", va="center", fontsize=FONT)
        centres = _token_row(ax, 1.0, y, [COLOURS[m]] * count)
        bar_y = y + TOKEN + 0.05
        for centre, score in zip(centres, EXAMPLE_SCORES[m], strict=True):
            low = score < THRESHOLD
            ax.add_patch(Rectangle((centre - 0.06, bar_y), 0.12, max(score, 0.02) * 0.5,
                                   facecolor="#c0392b" if low else "#777777"))
            ax.text(centre, bar_y + 0.55 if not low else bar_y + 0.08, f"{score:g}", ha="center",
                    va="bottom", fontsize=SMALL - 1)
        ax.plot([0.95, centres[-1] + 0.2], [bar_y + THRESHOLD * 0.5] * 2, color="#c0392b", linewidth=0.8,
                linestyle=":")
    ax.text(1.0 + count * (TOKEN + GAP) + 0.05, 2.35 + TOKEN + 0.06, "θ", color="#c0392b", fontsize=FONT)
    ax.text(1.0, 3.55, "score $s^l(e) \\in [0, 1]$ per token (an MLP; Eq. 5's l1 term pushes it to 0)",
            ha="left", va="center", fontsize=SMALL)
    _arrow(ax, (3.45, 1.55), (4.25, 1.55), "Eq. 6", text_at=(3.85, 1.65))
    ax.text(3.85, 1.45, "below θ:\nsubstitute", ha="center", va="top", fontsize=SMALL)
    for m, y in rows.items():
        sources = new_tokens[m][0]
        colours = [COLOURS[modalities[int(source)]] for source, _ in sources.tolist()]
        centres = _token_row(ax, 4.4, y, colours)
        for centre, (source, position) in zip(centres, sources.tolist(), strict=True):
            if modalities[int(source)] != m:
                other_y = rows[modalities[int(source)]]
                _arrow(ax, (centre, other_y + (TOKEN if other_y < y else 0)),
                       (centre, y + (0 if other_y < y else TOKEN)), colour="#c0392b")
                upwards = other_y < y
                ax.text(centre + (-0.1 if upwards else 0.1), (y + other_y + TOKEN) / 2,
                        f"{modalities[int(source)]}'s\ntoken {int(position)}", va="center",
                        ha="right" if upwards else "left", fontsize=SMALL - 1, color="#c0392b")
            _token(ax, centre - 0.12, y - 0.32, COLOURS["position"], size=0.24)
        ax.text(centres[-1] + 0.2, y - 0.2, "+ its own $E_{pos}$\n(RPA)", ha="left", va="center",
                fontsize=SMALL)
    for m, y in rows.items():
        _arrow(ax, (6.75, y + TOKEN / 2), (7.85, y + TOKEN / 2))
        _box(ax, 7.9, y - 0.25, 3.0, 0.8, f"layer l for {m} (the paper shares its\n"
             "weights; LayerNorms per modality):\ne + s · MSA(LN(e)), then MLP (Eq. 4)", COLOURS[m] + "33",
             fontsize=SMALL)
    ax.text(5.5, 0.08, "Drawn as the paper's Eq. 6 reads: the layer inputs are substituted. The official "
            "code (the package's default) substitutes the scored attention outputs inside the layer instead.",
            ha="center", va="bottom", fontsize=SMALL - 0.5, style="italic")
    _title(ax, 5.5, 3.75, "TokenFusion: replace the tokens the model scores as uninformative")
    return fig


# TokenFusion across formats (notebook 04) ------------------------------------------------------

CAMERA_FOCAL = 16.0  # pixels, for a 32 × 32 image
IMAGE_SIZE, PATCH = 32, 8
EXAMPLE_POINTS = ((-0.5, -0.6, 2.0), (0.9, 0.2, 3.0), (-0.2, 0.9, 1.5), (0.0, -1.6, 1.4), (0.3, 0.3, -0.6))


def point_to_patch() -> Figure:
    """Sec. 3.5, Eqs. 8–9: z_c [u, v, 1]^T = K [R | t] p and patch = ⌊v/P⌋ · W/P + ⌊u/P⌋, for a camera at the
    origin looking along +z. The side view shows (z, y); the patches and their indices come from
    ``project_to_patches``."""
    points = torch.tensor([EXAMPLE_POINTS])
    intrinsic = intrinsics(CAMERA_FOCAL, IMAGE_SIZE, IMAGE_SIZE)[None]  # K
    extrinsic = torch.cat([torch.eye(3), torch.zeros(3, 1)], dim=1)[None]  # [R | t] = [I | 0]
    index, valid = project_to_patches(points, intrinsic, extrinsic, IMAGE_SIZE, PATCH)
    colours = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e")
    fig, ax = _canvas(11.0, 3.9)
    # side view: depth z to the right; y points down in the image, so up on the page is -y
    unit, centre_y, camera_x = 0.9, 1.75, 1.2  # inches per unit of length; where the camera sits
    plane_x, half = camera_x + unit, unit * IMAGE_SIZE / 2 / CAMERA_FOCAL  # the image plane at z = 1
    ax.add_patch(Polygon([(camera_x, centre_y), (camera_x - 0.3, centre_y + 0.2),
                          (camera_x - 0.3, centre_y - 0.2)], facecolor="#333333"))
    ax.text(camera_x - 0.15, centre_y + 0.3, "camera", ha="center", va="bottom", fontsize=SMALL)
    ax.plot([plane_x, plane_x], [centre_y - half, centre_y + half], color="#333333", linewidth=2)
    rows = IMAGE_SIZE // PATCH
    for tick in range(rows + 1):
        y = centre_y + half - tick * 2 * half / rows
        ax.plot([plane_x - 0.05, plane_x + 0.05], [y, y], color="#333333", linewidth=0.8)
    ax.text(plane_x + 0.1, centre_y - half - 0.05, "image plane\n(rows of patches)", ha="left", va="top",
            fontsize=SMALL)
    for (_, y, z), colour, ok in zip(EXAMPLE_POINTS, colours, valid[0].tolist(), strict=True):
        page = (camera_x + unit * z, centre_y - unit * y)
        ax.add_patch(Circle(page, 0.07, color=colour))
        ax.plot([camera_x, page[0]], [centre_y, page[1]], color=colour, linewidth=0.7,
                linestyle="-" if ok else ":")
        if not ok:
            reason = "behind the camera" if z <= 0 else "outside the image"
            ax.text(page[0], page[1] - 0.12, f"no patch:\n{reason}", fontsize=SMALL - 0.5, ha="center",
                    va="top", color=colour)
    ax.text(2.6, 0.2, "side view: depth z →", ha="center", fontsize=SMALL)
    # front view: the image's patches and where the points land
    left, bottom, cell = 5.0, 0.45, 0.62
    for row in range(rows):
        for column in range(rows):
            x, y = left + column * cell, bottom + (rows - 1 - row) * cell
            ax.add_patch(Rectangle((x, y), cell, cell, facecolor="white", edgecolor="#999999", linewidth=0.8))
            ax.text(x + 0.05, y + cell - 0.05, str(row * rows + column), fontsize=SMALL - 1.5, va="top",
                    color=COLOURS["faint"])
    u, v, _ = project_points(points, intrinsic, extrinsic)[0].T.tolist()  # the pixels Eq. 8 gives
    for point, colour in enumerate(colours):
        if valid[0, point]:
            row, column = divmod(int(index[0, point]), rows)
            ax.add_patch(Rectangle((left + column * cell, bottom + (rows - 1 - row) * cell), cell, cell,
                                   facecolor=colour, alpha=0.25))
            pixel = (left + u[point] / PATCH * cell, bottom + (IMAGE_SIZE - v[point]) / PATCH * cell)
            ax.add_patch(Circle(pixel, 0.07, color=colour))
    ax.text(left + rows * cell / 2, bottom - 0.1, "front view: W × H pixels, P × P patches", ha="center",
            va="top", fontsize=SMALL)
    ax.text(7.85, 2.7, "$z_c\\,[u, v, 1]^T = K\\,[R \\mid t]\\,[x, y, z, 1]^T$  (Eq. 8)", fontsize=FONT,
            va="center")
    ax.text(7.85, 2.15, "patch $= \\lfloor v/P \\rfloor \\cdot W/P + \\lfloor u/P \\rfloor$  (Eq. 9)",
            fontsize=FONT, va="center")
    ax.text(7.85, 1.25, "a point token scored below θ reads\nh(the image token of its patch);\n"
            "a point with no patch is read as it is", fontsize=SMALL, va="center")
    _title(ax, 5.5, 3.7, "A camera tells a point token which image patch it sees")
    return fig


# CrossViT (notebook 05) ------------------------------------------------------------------------

def cls_cross_attention() -> Figure:
    """Sec. 3.4: the L-branch's CLS token, projected by f to the S-branch's width, is the only query over
    [itself; the S-branch's patch tokens]; the result is added to it, projected back by g, and rejoins
    the L-branch's patches. The S-branch's CLS token reads the L-branch's patches the same way."""
    fig, ax = _canvas(11.0, 3.8)
    large, small = 0.42, 0.24
    ax.text(0.15, 2.85, "L-branch\n(large patches)", fontsize=SMALL, va="center")
    _token(ax, 1.3, 2.65, COLOURS["cls"], "cls", size=large)
    for index in range(4):
        _token(ax, 1.85 + index * (large + GAP), 2.65, COLOURS["rgb"], size=large)
    ax.text(0.15, 0.75, "S-branch\n(small patches)", fontsize=SMALL, va="center")
    _token(ax, 1.3, 0.63, COLOURS["cls"], "cls", size=small)
    patch_centres = _token_row(ax, 1.7, 0.63, [COLOURS["depth"]] * 10, size=small)
    # f(x_cls): the query
    _arrow(ax, (1.51, 2.65), (3.9, 1.75), curve=0.25)
    ax.text(2.2, 2.1, "f (to S's width)", fontsize=SMALL, ha="center")
    _token(ax, 3.9, 1.55, COLOURS["cls"], "q", size=small)
    weights = (0.05, 0.3, 0.1, 0.02, 0.2, 0.04, 0.15, 0.03, 0.06, 0.05)
    for centre, weight in zip(patch_centres, weights, strict=True):
        ax.plot([4.02, centre], [1.55, 0.63 + small], color=COLOURS["fused"], linewidth=0.5 + 6 * weight,
                alpha=0.8)
    ax.text(5.3, 1.2, "one query: the CLS token attends to\n[itself; the other branch's patches]\n"
            "A = softmax(q kᵀ / √(C/h)), 1 × (1 + n)", fontsize=SMALL, va="center")
    _box(ax, 4.7, 2.0, 2.1, 0.5, "y = f(x_cls) + CA(LN(·))", COLOURS["fused"] + "44", fontsize=SMALL)
    _arrow(ax, (4.14, 1.67), (4.7, 2.2))
    _arrow(ax, (6.8, 2.25), (7.35, 2.6), "g (back)", text_at=(7.0, 2.5))
    _token(ax, 7.4, 2.65, COLOURS["fused"], "cls", size=large)
    for index in range(4):
        _token(ax, 7.95 + index * (large + GAP), 2.65, COLOURS["rgb"], size=large)
    ax.text(8.8, 2.45, "rejoins its own patch tokens", fontsize=SMALL, ha="center", va="top")
    ax.text(7.4, 0.75, "the S-branch's CLS token reads the\nL-branch's patches the same way:\n"
            "one query per direction, cost linear in n", fontsize=SMALL, va="center")
    _title(ax, 5.5, 3.6, "CrossViT: each branch's CLS token is the only query over the other branch")
    return fig


# MBT (notebook 06) -----------------------------------------------------------------------------

def _groups(ax: plt.Axes, x: float, y: float, with_bottlenecks: bool) -> dict[str, tuple[float, float]]:
    """Frame tokens above, spectrogram tokens below and, between them, B = 2 bottleneck tokens; returns
    the centre of each group."""
    size = 0.22
    frames = _token_row(ax, x, y + 1.0, [COLOURS["rgb"]] * 4, size=size)
    spectrogram = _token_row(ax, x, y, [COLOURS["depth"]] * 4, size=size)
    centres = {"frames": (sum(frames) / 4, y + 1.0 + size / 2),
               "spectrogram": (sum(spectrogram) / 4, y + size / 2)}
    if with_bottlenecks:
        bottleneck = _token_row(ax, x + 0.45, y + 0.5, [COLOURS["fused"]] * 2, size=size)
        centres["bottleneck"] = (sum(bottleneck) / 2, y + 0.5 + size / 2)
    return centres


def bottleneck_patterns() -> Figure:
    """Sec. 3.2–3.3: in a layer from L_f on, who may read whom. Late: nobody across; vanilla: one layer
    over all tokens; cross: each modality's layer reads both; bottleneck: each modality's layer reads
    [its tokens; z_fsn], and the two updates of z_fsn are averaged (Eqs. 8–9)."""
    fig, ax = _canvas(11.0, 3.5)
    panels = (("late", "each stream alone;\nthey meet in the classifier"),
              ("vanilla", "one shared layer over\n[frames; spectrogram]"),
              ("cross", "each modality's own layer\nreads both modalities"),
              ("bottleneck", "across only through the B tokens\nz_fsn: the mean of both updates"))
    for index, (name, caption) in enumerate(panels):
        x = 0.4 + index * 2.45
        centres = _groups(ax, x, 1.1, name == "bottleneck")
        frames, spectrogram = centres["frames"], centres["spectrogram"]
        if name == "vanilla":
            _box(ax, x - 0.12, 0.98, 1.6, 1.46, "", "none", dashed=True)
        elif name == "cross":
            _arrow(ax, (frames[0], frames[1] - 0.14), (spectrogram[0], spectrogram[1] + 0.14), both_ways=True)
        elif name == "bottleneck":
            bottleneck = centres["bottleneck"]
            for end, step in ((frames, -0.14), (spectrogram, 0.14)):
                _arrow(ax, (end[0], end[1] + step), (bottleneck[0], bottleneck[1] - step), both_ways=True)
        ax.text(x + 0.7, 2.75, name, ha="center", fontsize=FONT, fontweight="bold")
        ax.text(x + 0.7, 0.9, caption, ha="center", va="top", fontsize=SMALL)
    _legend(ax, 9.85, 2.3, {"rgb": "frame tokens", "depth": "spectrogram\ntokens",
                            "fused": "bottleneck\ntokens"})
    ax.text(5.5, 0.15, "layers 0 … L_f − 1: every mode is unimodal;  layers L_f … L − 1: the pattern above "
            "(section 2 draws it as a mask)", ha="center", fontsize=SMALL)
    _title(ax, 5.5, 3.3, "MBT: four ways for frames and sound to meet in a layer")
    return fig


# LAVT (notebook 07) ----------------------------------------------------------------------------

def pwam_and_gate() -> Figure:
    """Sec. 3.2–3.3: after stage i, F_i = PWAM(V_i, L) (Eqs. 1–7); the gate S_i = tanh(W₂ ReLU(W₁ F_i))
    (Eq. 8) decides how much of it enters the next stage, E_i = S_i ⊙ F_i + V_i (Eq. 9); the decoder
    reads every F_i (Eq. 10). The last stage has no next stage, so no gate."""
    fig, ax = _canvas(11.0, 4.2)
    _box(ax, 1.2, 3.25, 8.8, 0.42, "text encoder: words → L (b t d), padding masked",
         COLOURS["language"] + "44", fontsize=SMALL)
    x, row = 0.15, 2.0  # the left of a stage; the bottom of the row of boxes
    for stage in range(1, 5):
        _box(ax, x, row, 0.75, 0.55, f"stage {stage}\n(Swin)", COLOURS["rgb"] + "44", fontsize=SMALL)
        _box(ax, x + 1.05, row, 0.65, 0.55, "PWAM", COLOURS["fused"] + "44", fontsize=SMALL)
        _arrow(ax, (x + 0.75, row + 0.27), (x + 1.05, row + 0.27))
        ax.text(x + 0.9, row + 0.32, f"$V_{stage}$", ha="center", va="bottom", fontsize=SMALL)
        _arrow(ax, (x + 1.37, 3.25), (x + 1.37, row + 0.55), colour=COLOURS["language"])
        _arrow(ax, (x + 1.37, row), (x + 1.37, 1.0))
        ax.text(x + 1.42, 1.4, f"$F_{stage}$", ha="left", va="center", fontsize=SMALL)
        if stage < 4:
            _box(ax, x + 1.85, row, 0.4, 0.55, f"$S_{stage}$", COLOURS["language"] + "22", fontsize=SMALL)
            _arrow(ax, (x + 1.7, row + 0.27), (x + 1.85, row + 0.27))
            plus = (x + 2.45, row + 0.27)
            ax.add_patch(Circle(plus, 0.09, facecolor="white", edgecolor="#333333", linewidth=0.8))
            ax.text(*plus, "+", ha="center", va="center", fontsize=SMALL)
            _arrow(ax, (x + 2.25, row + 0.27), (plus[0] - 0.09, plus[1]))
            _arrow(ax, (x + 0.9, row + 0.55), (plus[0], plus[1] + 0.09), curve=-0.5)  # the residual V_i
            _arrow(ax, (plus[0] + 0.09, plus[1]), (x + 2.7, row + 0.27))
            ax.text(x + 2.6, row + 0.05, f"$E_{stage}$", ha="center", va="top", fontsize=SMALL)
        x += 2.7
    _box(ax, 0.6, 0.55, 9.8, 0.45, "decoder: reads $F_4, F_3, F_2, F_1$, upsampling to the mask (Eq. 10)",
         COLOURS["layer"], fontsize=SMALL)
    ax.text(0.2, 0.25, "$F_i$ = PWAM($V_i$, L): each pixel attends over the words, and its language feature "
            "multiplies its visual one (Eqs. 1–7)", fontsize=SMALL, va="center")
    ax.text(7.3, 0.25, "$S_i = \\tanh(W_2\\,\\mathrm{ReLU}(W_1 F_i))$ (Eq. 8);  "
            "$E_i = S_i \\odot F_i + V_i$ (Eq. 9)", fontsize=SMALL, va="center")
    _title(ax, 5.5, 4.0, "LAVT: language enters the vision encoder after every stage, through a gate")
    return fig


DIAGRAMS: dict[str, Callable[[], Figure]] = {
    "vit_tokens": vit_tokens, "fusion_baselines": fusion_baselines, "token_substitution": token_substitution,
    "point_to_patch": point_to_patch, "cls_cross_attention": cls_cross_attention,
    "bottleneck_patterns": bottleneck_patterns, "pwam_and_gate": pwam_and_gate}


def write_diagrams(folder: str | Path) -> list[Path]:
    """Draw every diagram to ``folder/<name>.svg`` (text kept as text, no date, stable ids); return the
    paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": "fusion_edu"}):
        for name, draw in DIAGRAMS.items():
            fig = draw()
            path = folder / f"{name}.svg"
            fig.savefig(path, metadata={"Date": None})
            plt.close(fig)
            paths.append(path)
    return paths


if __name__ == "__main__":
    for written in write_diagrams(sys.argv[1] if len(sys.argv) > 1 else "notebooks/figures"):
        print(written)
