"""Random-resized-crop speed: fgbench's RandomResizedCropFlip against torchvision's per-image
v2.RandomResizedCrop + RandomHorizontalFlip, in the same process, on the same images.

Small images (28x28, a Fashion-MNIST batch) take fgbench's one-call grid_sample path; large ones
(375x500 RGB, a CUB-sized photo, to 224) its per-crop antialiased path, which computes the same
pixels as torchvision (tests/test_transforms.py). Prints milliseconds per batch and the ratio
torchvision / fgbench (> 1: fgbench faster).

    .venv/bin/python benchmarks/crop.py [--threads 1] [--repeats 5]
"""

import argparse
import time

import torch
from torchvision.transforms import v2

from fgbench.data.transforms import RandomResizedCropFlip


def best_time(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cases = [("28x28 grey -> 28, batch 256", torch.rand(256, 1, 28, 28), 28),
             ("375x500 RGB -> 224, batch 32", torch.rand(32, 3, 375, 500), 224)]
    print(f"{'case':32s} {'fgbench ms':>11s} {'torchvision ms':>15s} {'ratio':>6s}")
    for name, images, size in cases:
        ours = RandomResizedCropFlip(size)
        theirs = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])
        t_ours = best_time(lambda: ours(images), args.repeats)
        t_theirs = best_time(lambda: torch.stack([theirs(img) for img in images]), args.repeats)
        print(f"{name:32s} {1e3 * t_ours:11.1f} {1e3 * t_theirs:15.1f} {t_theirs / t_ours:6.2f}")


if __name__ == "__main__":
    main()
