"""Training throughput of fusion_edu's models against timm's, same configuration: the ViT against
timm's VisionTransformer, and CrossViT against timm's CrossVit.

    python benchmarks/throughput.py [--steps 30] [--repeats 5] [--batch-size 64] [--threads 2]

Both models of a pair take the same weights (ours loads timm's), the same batch, AdamW and the same
number of steps; each repeat is timed after a warm-up, and the table prints the median images/s
of each and their ratio. Timings are noisy on a shared machine: compare the ratio, within one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from timm.models.crossvit import CrossVit as TimmCrossViT
from timm.models.vision_transformer import VisionTransformer as TimmViT

from fusion_edu.crossvit import CrossViT, load_timm_crossvit
from fusion_edu.train import default_device, seeded
from fusion_edu.vit import VisionTransformer

IMG_SIZE, NUM_CLASSES = 32, 5
VIT = dict(img_size=IMG_SIZE, patch_size=4, embed_dim=64, depth=4, num_heads=4, num_classes=NUM_CLASSES)
CROSSVIT = dict(patch_sizes=(4, 8), embed_dims=(48, 96), depth=((1, 2, 1),) * 3, num_heads=(3, 3),
                mlp_ratios=(2.0, 2.0))
WARMUP_STEPS = 5


def vit_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ours, timm's) ViT with the same weights."""
    timm_model = TimmViT(**VIT)
    ours = VisionTransformer(**VIT)
    ours.load_state_dict(timm_model.state_dict())
    return ours, timm_model


def crossvit_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    """(ours, timm's) CrossViT with the same weights (timm's layout: 0 cross layers means one)."""
    cfg = CROSSVIT
    timm_model = TimmCrossViT(img_size=IMG_SIZE, img_scale=(1.0, 1.0), patch_size=cfg["patch_sizes"],
                              embed_dim=cfg["embed_dims"], num_heads=cfg["num_heads"],
                              mlp_ratio=(*cfg["mlp_ratios"], 1.0), num_classes=NUM_CLASSES,
                              depth=tuple((small, large, 0) for small, large, _ in cfg["depth"]))
    ours = CrossViT(img_size=IMG_SIZE, num_classes=NUM_CLASSES, reattach_patches=False, **cfg)
    load_timm_crossvit(ours, timm_model)
    return ours, timm_model


PAIRS = {"ViT": vit_pair, "CrossViT": crossvit_pair}


def _logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    output = model(images)
    return output if isinstance(output, torch.Tensor) else output.logits


def images_per_second(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                      steps: int) -> float:
    """Forward, backward and an AdamW step, ``steps`` times; returns images per second."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()

    def step() -> None:
        loss = F.cross_entropy(_logits(model, images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(WARMUP_STEPS):
        step()
    if images.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if images.is_cuda:
        torch.cuda.synchronize()
    return steps * len(images) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = default_device()
    print(f"device {device}, threads {args.threads}, batch {args.batch_size}; ViT {VIT}; CrossViT {CROSSVIT}")
    print(f"{'model':<10}{'fusion_edu img/s':>18}{'timm img/s':>12}{'ratio':>8}"
          f"   (medians of {args.repeats})")
    for name, make_pair in PAIRS.items():
        with seeded(0):
            ours, timm_model = (model.to(device) for model in make_pair())
            images = torch.randn(args.batch_size, 3, IMG_SIZE, IMG_SIZE, device=device)
            labels = torch.randint(0, NUM_CLASSES, (args.batch_size,), device=device)
        rates: dict[str, list[float]] = {"fusion_edu": [], "timm": []}
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
            rates["fusion_edu"].append(images_per_second(ours, images, labels, args.steps))
            rates["timm"].append(images_per_second(timm_model, images, labels, args.steps))
        ours_rate, timm_rate = (statistics.median(rates[k]) for k in ("fusion_edu", "timm"))
        print(f"{name:<10}{ours_rate:>18.0f}{timm_rate:>12.0f}{ours_rate / timm_rate:>8.3f}")


if __name__ == "__main__":
    main()
