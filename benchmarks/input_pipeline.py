"""Input pipeline per core: images per second of one DataLoader worker (1 process, 1 thread) on
an ImageNet-like folder, for the single-view and MoCo-v2 two-view pipelines, read three ways:

- file: today's JPEG-file path, exactly what a worker runs: ``ImageDataset.__getitems__`` over
  ``ImageFiles`` with ``build_augment("moco_v2", 224)`` (PIL decode, float tensor, random
  resized crop, colour jitter, grayscale, blur, flip, per image and per view);
- store: an image store built by ``fgbench.data.store`` (shorter side 256) read per image by
  ``ImageDataset(..., uint8=True)`` with the worker half of ``split_augment("moco_v2", 224)``
  (what a worker runs with ``train.batch_augment: true``: torchvision v2
  ``RandomResizedCrop(224, scale=(0.2, 1), antialias=True)`` and ``RandomHorizontalFlip`` on the
  uint8 tensor; colour jitter, grayscale and blur run on the batch on the training device);
- floor: PIL decode + the same crop and flip alone (the least the file path can cost).

A fourth row, ``store as JPEG q95``, keeps the store's 256-pixel images re-encoded (quality 95)
instead of raw pixels: smaller on disk, but every read decodes again; the raw store is used when
it is faster per core. The folder (``--images`` JPEGs of 500x375 with 1/f^2 texture and edges, so
decoding costs what it costs on photos) is written by the script. Prints images per second, the
ratios and the store's bytes per image.

    OMP_NUM_THREADS=1 python benchmarks/input_pipeline.py [--images 2000] [--measure 300] [--folder DIR]
"""

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from fgbench.data.images import ImageFiles, decode_image
from fgbench.data.store import build_store, open_store
from fgbench.data.transforms import ImageDataset, build_augment, split_augment

SIZE, STORE_SIZE, WIDTH, HEIGHT = 224, 256, 500, 375


def texture(rng, height, width):
    """A (height, width, 3) uint8 image with a natural image's 1/f^2 power spectrum and mixed colours."""
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
    amplitude = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(height, width))
    channels = []
    for _ in range(3):
        phase = np.exp(2j * np.pi * rng.random(amplitude.shape))
        channels.append(np.fft.irfft2(amplitude * phase, s=(height, width)))
    x = np.stack(channels, -1) @ rng.normal(size=(3, 3))  # correlated colour channels
    x = (x - x.mean()) / x.std()
    return np.clip(128 + 45 * x, 0, 255).astype(np.uint8)


def write_folder(folder: Path, count: int, seed: int = 0) -> list:
    """``count`` JPEGs (quality 90, ImageNet's usual) in ``folder``: crops of a few large
    textures with random colour gains and a few filled shapes (edges), 500x375 or 375x500."""
    rng = np.random.default_rng(seed)
    bases = [texture(rng, 900, 1200) for _ in range(6)]
    names = []
    for i in range(count):
        base = bases[i % len(bases)]
        h, w = (HEIGHT, WIDTH) if i % 4 else (WIDTH, HEIGHT)
        top, left = rng.integers(0, base.shape[0] - h), rng.integers(0, base.shape[1] - w)
        pixels = base[top : top + h, left : left + w] * rng.uniform(0.7, 1.3, size=3)
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(4):
            x0, y0 = rng.integers(0, w - 40), rng.integers(0, h - 40)
            box = (x0, y0, x0 + rng.integers(20, w // 2), y0 + rng.integers(20, h // 2))
            draw.ellipse(box, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        names.append(f"n{i % 10:08d}/img_{i:05d}.JPEG")
        (folder / names[-1]).parent.mkdir(parents=True, exist_ok=True)
        image.save(folder / names[-1], "JPEG", quality=90)
    return names


def per_second(pipelines: dict, count: int, batch: int = 32) -> dict:
    """Images per second of each ``read_batch(indices)`` in ``pipelines`` over the first ``count``
    images, after a warm-up batch. The pipelines take turns batch by batch, so a change in the
    machine's load (it is shared) slows them alike and the ratios stay fair."""
    seconds = dict.fromkeys(pipelines, 0.0)
    for read_batch in pipelines.values():
        read_batch(list(range(min(batch, count))))
    for i in range(0, count, batch):
        indices = list(range(i, min(i + batch, count)))
        for name, read_batch in pipelines.items():
            start = time.perf_counter()
            read_batch(indices)
            seconds[name] += time.perf_counter() - start
    return {name: count / s for name, s in seconds.items()}


def crop_flip():
    """MoCo-v2's worker half under batch augmentation: crop and flip on uint8."""
    return split_augment("moco_v2", SIZE)[0]


def uint8_views(read, views: int):
    """A worker's batch: each image read once (uint8 HWC), cropped and flipped ``views`` times on uint8."""
    crop = crop_flip()

    def batch(indices):
        images = [torch.from_numpy(read(i)).permute(2, 0, 1) for i in indices]
        return [torch.stack([crop(x) for x in images]) for _ in range(views)]

    return batch


def jpeg_store(store) -> list:
    """The store's images re-encoded as JPEG quality 95, in memory."""
    blobs = []
    for image in store:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=95)
        blobs.append(buffer.getvalue())
    return blobs


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="JPEGs in the synthetic folder")
    parser.add_argument("--measure", type=int, default=300, help="images read per measurement")
    parser.add_argument("--folder", help="reuse (or write) the synthetic folder here; default: a temporary one")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder or tmp)
        listing = folder / "files.txt"
        if listing.is_file():
            names = listing.read_text().split()
        else:
            start = time.perf_counter()
            names = write_folder(folder, args.images)
            listing.write_text("\n".join(names))
            print(f"wrote {len(names)} JPEGs in {time.perf_counter() - start:.0f} s")
        files = ImageFiles(folder, names)
        jpeg_bytes = sum((folder / n).stat().st_size for n in names) / len(names)
        start = time.perf_counter()
        meta = build_store(files, folder / "store.u8", STORE_SIZE)
        build_s = (time.perf_counter() - start) / len(names)
        store = open_store(folder / "store.u8", meta["offsets"], meta["shapes"], str(meta["list_hash"]))
        store_bytes = (folder / "store.u8").stat().st_size / len(names)
        blobs = jpeg_store(store)
        count = min(args.measure, len(names))
        labels = torch.zeros(len(names), dtype=torch.long)
        augment = build_augment("moco_v2", SIZE)
        rows, load = {}, os.getloadavg()[0]
        for views in (1, 2):
            pipelines = {
                "file": ImageDataset(files, labels, augment, views=views).__getitems__,
                "store": ImageDataset(store, labels, crop_flip(), views=views, uint8=True).__getitems__,
                "store as JPEG q95": uint8_views(lambda i: decode_image(io.BytesIO(blobs[i]), str(i), ""), views),
                "floor": uint8_views(files.__getitem__, views),
            }
            rows.update({(name, views): v for name, v in per_second(pipelines, count).items()})
    print(f"\n{count} images of {WIDTH}x{HEIGHT} (JPEG q90, {jpeg_bytes / 1e3:.0f} kB each), crops {SIZE}, "
          f"1 process, 1 thread, load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the end")
    print(f"{'pipeline':20s} {'1 view img/s':>13s} {'2 views img/s':>14s}")
    for name in ("file", "store", "store as JPEG q95", "floor"):
        print(f"{name:20s} {rows[(name, 1)]:13.1f} {rows[(name, 2)]:14.1f}")
    print("\nratios (images per second per core):")
    for views, label in ((1, "single view"), (2, "MoCo-v2 two views")):
        print(f"  {label:18s} store / file {rows[('store', views)] / rows[('file', views)]:5.2f}x   "
              f"floor / file {rows[('floor', views)] / rows[('file', views)]:5.2f}x   "
              f"store / floor {rows[('store', views)] / rows[('floor', views)]:5.2f}x   "
              f"raw store / JPEG store {rows[('store', views)] / rows[('store as JPEG q95', views)]:5.2f}x")
    print(f"\nstore on disk: {store_bytes / 1e3:.0f} kB per image raw uint8 (shorter side {STORE_SIZE}), "
          f"{sum(map(len, blobs)) / len(blobs) / 1e3:.0f} kB as JPEG q95; the source JPEGs {jpeg_bytes / 1e3:.0f} kB; "
          f"building it: {1e3 * build_s:.1f} ms per image on 1 thread")
    print("store path: ImageDataset(uint8=True) with split_augment('moco_v2')'s worker half "
          "(RandomResizedCrop(antialias=True) + flip on the uint8 tensor)")


if __name__ == "__main__":
    main()
