"""The GPU check's measurements (run by benchmarks/gpu_check.sh, which installs what is missing and
runs the CUDA tests first): one table of

- ResNet-50 at 224 px, raw forward+backward+SGD step on a batch already on the device: img/s in
  fp32, bf16 autocast, and bf16 with channels-last;
- fgbench's training loop (``fgbench.train.loop.train``, the BREEDS experiment's hyperparameters)
  for supervised_coarse and ANCOR on a synthetic ImageNet-like JPEG folder written here: img/s of
  its last epoch (``images_per_s`` of train_log.csv) and its data waiting, with the JPEG-file path
  and the decoded-image store (``datasets.X.store: resized``);
- the few-shot solver (``fit_predict_logreg``) at the entity30 all-way shape (240 classes,
  2048-d, 1-shot, 5 views, 15 queries): ms per episode over ``--episodes`` episodes.

    python benchmarks/gpu_check.py [--dry]

``--dry``: the same stages on the CPU at tiny sizes (a ResNet-10 at 32 px for the raw step, the
small CNN in the loop, 20 training images, 3 episodes of 12 classes), to check the script end to
end; its figures mean nothing.
"""

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would interleave with the table

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "pkg"))
sys.path.insert(0, str(REPO / "benchmarks"))

from fgbench import config as fgconfig  # noqa: E402
from fgbench.data import DATASETS, imagenet, prepare  # noqa: E402
from fgbench.data.images import ImageFiles  # noqa: E402
from fgbench.train import loop  # noqa: E402

# GPU sizes and --dry sizes
FULL = {"network": "resnet50", "image_size": 224, "batch": 256, "raw_steps": 30, "classes": 30, "per_class": 140,
        "jpeg": (500, 375), "epochs": 2, "episodes": 1000, "shape": (240, 2048), "val_fraction": 0.1}
DRY = {"network": "resnet10", "image_size": 32, "batch": 4, "raw_steps": 1, "classes": 4, "per_class": 6,
       "jpeg": (64, 48), "epochs": 1, "episodes": 3, "shape": (12, 64), "val_fraction": 0.25}


class SyntheticImageNet:
    """A BREEDS-like dataset over the synthetic folder (``root/{train,val}/<class>/*.JPEG``):
    fine classes in superclasses of 3, registered in ``fgbench.data.DATASETS`` for this process."""

    NAME = "synthetic_imagenet"
    SETTINGS = imagenet.SETTINGS
    NORMALIZE = imagenet.NORMALIZE
    TRANSFORMS = imagenet.TRANSFORMS
    READS_FILES = True  # images stay files: datasets.X.store may be resized

    def __init__(self, root: Path, classes: int, image_size: int):
        self.root, self.classes, self.IMAGE_SIZE = root, classes, image_size

    def read(self, cfg):
        def split(folder):
            paths = sorted(p.relative_to(self.root / folder).as_posix() for p in (self.root / folder).rglob("*.JPEG"))
            return ImageFiles(self.root / folder, np.asarray(paths)), np.asarray([int(p.split("/")[0][1:]) for p in paths])

        return {"train": split("train"), "test": split("val"),
                "fine_to_coarse": np.arange(self.classes) // 3,
                "fine_names": [f"c{k}" for k in range(self.classes)],
                "coarse_names": [f"s{k}" for k in range((self.classes + 2) // 3)]}


def write_folder(root: Path, sizes: dict) -> None:
    """Smooth random JPEGs (noise upsampled: they compress like photos, not like static) of about
    ImageNet's size, 5/6 in train/, 1/6 in val/."""
    rng = np.random.default_rng(0)
    width, height = sizes["jpeg"]
    for c in range(sizes["classes"]):
        for i in range(sizes["per_class"]):
            folder = root / ("val" if i % 6 == 5 else "train") / f"c{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
            Image.fromarray(small).resize((width, height), Image.BILINEAR).save(folder / f"{i}.JPEG", quality=90)


def time_steps(step, steps: int, device) -> float:
    """Seconds per call of ``step`` (after warm-up calls: cuDNN's autotuning, autocast's caches)."""
    for _ in range(2 if device.type == "cuda" else 1):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def raw_resnet50(device, sizes) -> list:
    """torchvision's ResNet-50 (--dry: a ResNet of one basic block per stage): forward,
    cross-entropy, backward and an SGD step."""
    from torchvision import models
    from torchvision.models.resnet import BasicBlock, ResNet

    networks = {"resnet50": models.resnet50, "resnet10": lambda: ResNet(BasicBlock, [1, 1, 1, 1])}

    rows, size, batch = [], sizes["image_size"], sizes["batch"]
    for name, dtype, channels_last in [("fp32", None, False), ("bf16", torch.bfloat16, False),
                                       ("bf16 + channels-last", torch.bfloat16, True)]:
        torch.manual_seed(0)
        model = networks[sizes["network"]]().to(device)
        images = torch.rand(batch, 3, size, size, device=device)
        labels = torch.randint(0, 1000, (batch,), device=device)
        if channels_last:
            model, images = model.to(memory_format=torch.channels_last), images.contiguous(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step():
            with loop._autocast(device, dtype):
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        seconds = time_steps(step, sizes["raw_steps"], device)
        rows.append((f"{sizes['network']} raw fwd+bwd", name, f"{batch / seconds:.0f} img/s", f"batch {batch}, {size} px"))
    return rows


def loop_config(sizes: dict, device, store: str | None, batch_augment: bool) -> dict:
    cfg = yaml.safe_load((REPO / "workflow/experiments/coarse_to_fine_breeds.yaml").read_text())
    workers = min(16, os.cpu_count() or 1) if device.type == "cuda" else 0
    backbone = {"name": "resnet50"} if device.type == "cuda" else {"name": "small_cnn", "width": 1}
    dataset = {"backbone": backbone, "train": {"num_workers": workers}, "val_fraction": sizes["val_fraction"]}
    if store is not None:
        dataset["store"] = store
    cfg.update(seeds=[0], benchmark={SyntheticImageNet.NAME: {"coarse_to_fine": ["supervised_coarse", "ancor"]}},
               datasets={SyntheticImageNet.NAME: dataset}, combinations=[])
    cfg["methods"]["ancor"]["params"]["queue_size"] = 4096 if device.type == "cuda" else 16
    cfg["train"].update(epochs=sizes["epochs"], batch_size=sizes["batch"], device=device.type, batch_augment=batch_augment,
                        precision="bf16" if device.type == "cuda" else "fp32", channels_last=device.type == "cuda",
                        bn_group_size=min(64, sizes["batch"]))
    return fgconfig.validate(cfg)


def training_loop(device, sizes, folder: Path, work: Path) -> list:
    """fgbench's training loop: the file path (batch augmentation off and on) and the store path."""
    DATASETS[SyntheticImageNet.NAME] = SyntheticImageNet(folder, sizes["classes"], sizes["image_size"])
    rows = []
    for method in ("supervised_coarse", "ancor"):
        for store, batch_augment in [(None, False), (None, True), ("resized", True)]:
            path = "files" if store is None else f"store: {store}"
            label = f"{path}, batch_augment {'on' if batch_augment else 'off'}"
            cfg = loop_config(sizes, device, store, batch_augment)
            spec = fgconfig.train_spec(cfg, SyntheticImageNet.NAME, "coarse_to_fine", method, 0)
            data = work / f"data-{path.replace(': ', '-')}.npz"
            if not data.exists():
                prepare(SyntheticImageNet.NAME, {**cfg["datasets"][SyntheticImageNet.NAME], "dataset": SyntheticImageNet.NAME}, data,
                        threads=min(16, os.cpu_count() or 1))
            out = work / f"{method}-{path.replace(': ', '-')}-{batch_augment}"
            with contextlib.redirect_stdout(sys.stderr):  # the epochs' lines stay out of the table
                loop.train(spec, data, out)
            last = pd.read_csv(out / "train_log.csv").iloc[-1]  # the last epoch: warmed up
            precision = f"{spec['train']['precision']}{' + channels-last' if spec['train']['channels_last'] else ''}"
            rows.append((f"loop {method}", label, f"{last['images_per_s']:.0f} img/s",
                         f"data wait {100 * last['data_wait']:.0f}%, {precision}, {spec['train']['num_workers']} workers"))
    return rows


def fewshot(device, sizes) -> list:
    """The batched logistic regression at the entity30 all-way shape, in blocks of 100 episodes
    (an all-way block of 1000 would hold 40 GB of features)."""
    from fewshot import make_features
    from fgbench.evaluate.fewshot import episode_arrays, fit_predict_logreg, sample_episode

    classes, dim = sizes["shape"]
    features, aug, fine = make_features(classes, 1 + 15 + 5, dim, 5, 0.3, 0.5, 0)
    total, correct, episodes = 0.0, [], sizes["episodes"]
    fit_predict_logreg(*episode_arrays(features, aug, [sample_episode(0, fine, n_way="all", n_shot=1, n_query=15)], 5)[:3],
                       device=device.type)  # warm-up
    for start in range(0, episodes, 100):
        draws = [sample_episode(i, fine, n_way="all", n_shot=1, n_query=15) for i in range(start, min(start + 100, episodes))]
        Xs, ys, Xq, yq = episode_arrays(features, aug, draws, 5)
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        pred = fit_predict_logreg(Xs, ys, Xq, device=device.type)
        total += time.perf_counter() - started
        correct.append((pred == yq).mean(1))
    accuracy = 100 * np.concatenate(correct).mean()
    return [("few-shot solver", f"all-way {classes} classes x {dim}-d", f"{1000 * total / episodes:.1f} ms/episode",
             f"{episodes} episodes, accuracy {accuracy:.1f}%")]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry", action="store_true", help="tiny sizes on the CPU: checks the script, measures nothing")
    p.add_argument("--tests", default="not run", help="the CUDA tests' result (gpu_check.sh passes pytest's summary)")
    p.add_argument("--work", type=Path, default=None, help="folder for the synthetic images and runs (default: a temporary one)")
    args = p.parse_args()
    sizes = DRY if args.dry else FULL
    device = torch.device("cpu" if args.dry else "cuda")
    if not args.dry and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device; run with --dry to check the script on the CPU")
    if args.dry:
        torch.set_num_threads(1)  # tiny tensors: more threads only contend (10x slower on 2 busy cores)
    rows = [("CUDA tests", "pytest -m cuda", args.tests, "")]
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        started = time.perf_counter()
        folder = Path(tmp) / "images"
        write_folder(folder, sizes)
        print(f"synthetic folder: {sizes['classes'] * sizes['per_class']} JPEGs of {sizes['jpeg'][0]}x{sizes['jpeg'][1]} "
              f"in {time.perf_counter() - started:.0f} s", flush=True)
        for stage in (lambda: raw_resnet50(device, sizes), lambda: training_loop(device, sizes, folder, Path(tmp)),
                      lambda: fewshot(device, sizes)):
            started = time.perf_counter()
            rows += stage()
            print(f"{rows[-1][0]}: {time.perf_counter() - started:.0f} s", flush=True)
    name = "CPU (--dry: tiny sizes, figures mean nothing)" if args.dry else torch.cuda.get_device_name(device)
    print(f"\n## GPU check on {name}, torch {torch.__version__}\n")
    print("| what | variant | figure | notes |\n|---|---|---:|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
