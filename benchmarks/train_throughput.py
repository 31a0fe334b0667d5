"""Training-loop throughput of every method against the raw forward+backward of the same network.

For each method, on real Fashion-MNIST (the default config's backbone and batch size): the
"loop" is fgbench's training epoch (sampler, augmentation, batching, device transfer, AMP and
NaN checks, logging); the "raw" reference runs only ``training_step`` + backward + optimizer
step on the very same batches, materialised beforehand, in the same process. The ratio
loop / raw is the fraction of the network's own speed that the loop keeps (target >= 0.9 for
supervised_coarse). Epoch hooks (SCGM's E-step) are outside both and timed on their own.

    .venv/bin/python benchmarks/train_throughput.py [--images-per-class 1000] [--threads 2]
"""

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars would interleave with the table

import torch
import yaml

from fgbench.config import train_spec, validate
from fgbench.data import load_prepared, prepare
from fgbench.data.transforms import ImageDataset, build_augment
from fgbench.distributed import wrap
from fgbench.methods import get_method_class
from fgbench.train.loop import _loader, _on_device, _optimizer, _Run, _train_epoch, build_model, image_shape, training_labels

REPO = Path(__file__).resolve().parents[1]
METHODS = ["supervised_coarse", "triplet", "moco", "ancor", "scgm_g", "scgm_a"]


def raw_epoch(method, optimizer, batches):
    """The reference: the method's own step on ready batches, nothing else."""
    method.train()
    for batch in batches:
        loss, _ = method.training_step(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def measure(cfg, data, name, device, repeats):
    spec = train_spec(cfg, "fashion_mnist", "coarse_to_fine", name, 0)
    split = data.splits["train"]
    classes, labels = training_labels(spec, split)
    views = get_method_class(name).views
    dataset = ImageDataset(split.images, labels, build_augment(spec["train"]["augment"], spec["image_size"]), views=views)
    torch.manual_seed(0)
    method = build_model(spec, len(classes), *image_shape(spec, split.images), len(dataset)).to(device)
    hook_started = time.perf_counter()
    method.on_epoch_start(0, lambda: _on_device(_loader(spec, dataset, labels, torch.Generator().manual_seed(1), whole_set=True), device))
    hook_seconds = time.perf_counter() - hook_started
    start_state = copy.deepcopy(method.state_dict())

    def fresh_run():
        method.load_state_dict(start_state)
        return _Run(method, _optimizer(spec, method), torch.amp.GradScaler(device.type, enabled=False))

    batches = list(_on_device(_loader(spec, dataset, labels, torch.Generator().manual_seed(2)), device))
    n_images = sum(len(b["labels"]) for b in batches)
    loop_s, raw_s = [], []
    for r in range(repeats):  # interleaved, so machine noise hits both alike
        run = fresh_run()
        started = time.perf_counter()
        _train_epoch(run, wrap(run.method, device), _loader(spec, dataset, labels, torch.Generator().manual_seed(2)), device, None, 0)
        loop_s.append(time.perf_counter() - started)
        run = fresh_run()
        started = time.perf_counter()
        raw_epoch(run.method, run.optimizer, batches)
        raw_s.append(time.perf_counter() - started)
    return n_images / min(loop_s), n_images / min(raw_s), hook_seconds


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images-per-class", type=int, default=1000, help="training images per fine class")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--methods", nargs="+", default=METHODS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["benchmark"] = {"fashion_mnist": {"coarse_to_fine": args.methods}}
    cfg = validate(config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        ds = {**cfg["datasets"]["fashion_mnist"], "dataset": "fashion_mnist",
              "max_images_per_class": {"train": args.images_per_class, "val": 10, "test": 10}}
        prepare("fashion_mnist", ds, Path(tmp) / "data.npz")
        data = load_prepared(Path(tmp) / "data.npz")
    print(f"{len(data.splits['train'])} training images, device {device}, {args.threads} threads, best of {args.repeats}")
    print(f"{'method':<18}{'loop img/s':>12}{'raw img/s':>12}{'ratio':>8}{'epoch hook s':>14}")
    for name in args.methods:
        loop, raw, hook = measure(cfg, data, name, device, args.repeats)
        print(f"{name:<18}{loop:>12.0f}{raw:>12.0f}{loop / raw:>8.2f}{hook:>14.2f}")


if __name__ == "__main__":
    main()
