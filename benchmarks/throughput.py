"""Training throughput of fusion_edu's ViT against timm's VisionTransformer, same configuration.

    python benchmarks/throughput.py [--steps 30] [--repeats 5] [--batch-size 64] [--threads 2]

Both models take the same weights (ours loads timm's state_dict), the same batch, AdamW and the same
number of steps; each repeat is timed after a warm-up, and the table prints the median images/s
of each and their ratio. Timings are noisy on a shared machine: compare the ratio, within one run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer as TimmViT

from fusion_edu.train import default_device, seeded
from fusion_edu.vit import VisionTransformer

CONFIG = dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4, num_classes=5)
WARMUP_STEPS = 5


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
    with seeded(0):
        timm_model = TimmViT(**CONFIG).to(device)
        ours = VisionTransformer(**CONFIG).to(device)
        ours.load_state_dict(timm_model.state_dict())
        images = torch.randn(args.batch_size, 3, CONFIG["img_size"], CONFIG["img_size"], device=device)
        labels = torch.randint(0, CONFIG["num_classes"], (args.batch_size,), device=device)
    rates: dict[str, list[float]] = {"fusion_edu": [], "timm": []}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        rates["fusion_edu"].append(images_per_second(ours, images, labels, args.steps))
        rates["timm"].append(images_per_second(timm_model, images, labels, args.steps))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(f"device {device}, threads {args.threads}, batch {args.batch_size}, config {CONFIG}")
    print(f"{'model':<12}{'median img/s':>14}{'min':>10}{'max':>10}")
    for name, values in rates.items():
        print(f"{name:<12}{medians[name]:>14.0f}{min(values):>10.0f}{max(values):>10.0f}")
    print(f"ratio fusion_edu / timm: {medians['fusion_edu'] / medians['timm']:.3f}")


if __name__ == "__main__":
    main()
