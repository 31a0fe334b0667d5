"""The training loop: seeded, CUDA when present, checkpoint every epoch, resume, best epoch on
the validation split (never the test split).

Reproducibility: every epoch starts by seeding torch, numpy and the batch sampler from
(seed, epoch), so an epoch's batches and augmentations do not depend on what ran before it;
together with the optimizer state in the checkpoint, a run killed after epoch k and restarted
ends with exactly the weights of an uninterrupted run (on CPU). The checkpoint is written to a
temporary file and renamed, so a kill during the write leaves the previous one intact.

Under torchrun (``distributed``) every rank runs this loop on its slice of each global batch;
rank 0 alone validates, prints and writes files, and every rank resumes from the checkpoint.
"""

import contextlib
import csv
import io
import itertools
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import BatchSampler, DataLoader, RandomSampler
from tqdm import tqdm

from .. import __version__
from ..config import spec_hash
from ..data import load_prepared
from ..data.noise import symmetric_label_noise
from ..data.samplers import ClassRandomBatchSampler
from ..data.transforms import BatchAugment, ImageDataset, batch_seed, build_augment, collate, eval_batches, split_augment
from ..errors import DataError, TrainingError
from ..evaluate.retrieval import nearest_neighbours, recall_at_k
from ..io import atomic_path, atomic_write_text
from ..methods import build_method, get_method_class
from ..provenance import run_hash
from ..models import Normalize, get_backbone
from .. import distributed

CHECKPOINT = "checkpoint.pt"
# an epoch whose step time is more than this fraction waiting for data gets a hint (once a run)
DATA_WAIT_HINT = 0.2
# train.precision -> autocast dtype (None: plain fp32, no autocast)
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("train.device is 'cuda' but no CUDA device is available; set it to auto or cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def training_labels(spec: dict, split):
    """The labels the method trains on, remapped to 0..n-1 over the training classes."""
    raw = split.coarse if spec["setting_def"]["train_label"] == "coarse" else split.fine
    classes, labels = np.unique(raw, return_inverse=True)
    return classes, torch.from_numpy(labels)


def build_model(spec: dict, num_classes: int, in_channels: int, image_size: int, num_samples: int = 0):
    backbone_cfg = dict(spec["backbone"])
    name = backbone_cfg.pop("name")
    if name == "small_cnn":
        backbone_cfg.update(in_channels=in_channels, image_size=image_size)
    else:
        backbone_cfg.update(in_channels=in_channels)
    backbone = get_backbone(name, **backbone_cfg)
    if spec.get("normalize"):
        backbone = Normalize(backbone, *spec["normalize"])
    method = build_method(spec["method"], backbone, num_classes=num_classes, num_samples=num_samples,
                          epochs=spec["train"]["epochs"], params=spec["params"])
    for layer in spec["embed_layers"]:
        method.check_layer(layer)
    return method


def _load(path, device, what: str) -> dict:
    """A ``torch.save``d dict; a truncated or damaged file is a ``DataError`` naming it."""
    try:
        saved = torch.load(path, map_location=device, weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as e:  # truncated zip, unpickling errors, ... : the message says which
        raise DataError(f"{what} file {path} is unreadable ({type(e).__name__}: {e}); delete it and rerun "
                        "(snakemake: the rerun trains it again)") from e
    if not isinstance(saved, dict):
        raise DataError(f"{what} file {path} holds a {type(saved).__name__}, not an fgbench {what}; delete it and rerun")
    return saved


def load_model(path, device="cpu", provenance=False):
    """Rebuild a trained method from ``model.pt``; weights load strictly (training-only state,
    such as key encoders and queues, is not saved there). ``(method, spec)``, plus the model's
    provenance hash with ``provenance`` ("" for a model.pt written before it existed)."""
    saved = _load(path, device, "model")
    method = build_model(saved["spec"], saved["num_classes"], *saved["input_shape"], saved["num_samples"])
    method.load_inference_state(saved["state_dict"])
    method = method.to(device).eval()
    return (method, saved["spec"], saved.get("provenance", "")) if provenance else (method, saved["spec"])


@torch.no_grad()
def embed_images(method, images, layers, device, *, transform=None, seeds=None, batch_size=1024, num_workers=0) -> dict:
    """Features of every layer in ``layers`` for a split's images: {layer: (N, D) float32}.

    ``transform`` (e.g. the eval resize-and-crop) applies per image; with ``seeds``, image i's
    transform runs under its own seed (the few-shot support views)."""
    method.eval()
    batches = eval_batches(images, transform, seeds, batch_size, num_workers)
    out = {layer: [] for layer in layers}
    for batch in batches:
        batch = batch.to(device)
        for layer in layers:
            out[layer].append(method.embed(batch, layer).float().cpu())
    return {layer: torch.cat(parts).numpy() for layer, parts in out.items()}


def image_shape(spec: dict, images) -> tuple:
    """(channels, size) of the images the network sees: square crops of the dataset's size."""
    first = np.asarray(images[0])
    return (1 if first.ndim == 2 else first.shape[-1]), spec["image_size"]


def _loader(spec, dataset, labels, generator, whole_set=False, batches=None):
    """The epoch's batches: ``batches`` (a method's own sampler), the configured sampler, or with
    ``whole_set`` every sample exactly once (epoch hooks: SCGM's E-step, vMF's init)."""
    t = spec["train"]
    if batches is None and t["sampler"] == "class_random" and not whole_set:
        batches = ClassRandomBatchSampler(labels, batch_size=t["batch_size"], samples_per_class=t["samples_per_class"],
                                          generator=generator, replacement=t["replacement"])
    elif batches is None:
        drop_last = not whole_set and _drops_last(t, len(dataset))
        batches = BatchSampler(RandomSampler(dataset, generator=generator), t["batch_size"], drop_last=drop_last)
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate, num_workers=t["num_workers"])


def _drops_last(train: dict, n: int) -> bool:
    """Whether a training epoch drops its last partial batch: ``train.drop_last``, or a remainder
    training cannot use (one image, which BatchNorm cannot normalise; under torchrun, one that
    does not split evenly over the processes)."""
    rest = n % train["batch_size"]
    return train["drop_last"] or rest == 1 or rest % distributed.world_size() != 0


def _plain_batches(spec, images, labels):
    """The training images through the eval transform, in index order, as training-batch dicts
    (STML's teacher pass); the same pipeline as embedding (``eval_batches``)."""
    t = spec["train"]
    transform = build_augment(spec["eval_transform"], spec["image_size"])
    start = 0
    for x in eval_batches(images, transform, None, t["batch_size"], t["num_workers"]):
        index = torch.arange(start, start + len(x))
        start += len(x)
        yield {"images": x, "labels": labels[index], "index": index}


def _device_batches(source, device, augment: BatchAugment, seeds: tuple, even=True):
    """Global batches of ``source`` as this rank trains on them: the batch augmentation's
    parameters drawn for the whole global batch (seeded by (run seed, epoch, stream) ``seeds``
    and the step), this rank's slice of it (every rank loaded and augmented the whole batch,
    drawing the same random numbers as one process would; see ``distributed``), moved to
    ``device``, converted to float and augmented there."""
    for step, batch in enumerate(source):
        batch = distributed.share(augment.draw(batch, batch_seed(*seeds, step)), even=even)
        yield augment.apply({k: v.to(device, non_blocking=True) for k, v in batch.items()})


def training_augment(spec: dict):
    """(the per-image augmentation the workers run, the BatchAugment the loop applies on the
    device): with ``train.batch_augment`` the halves of ``split_augment``, else the whole
    augmentation per image (the device side then only sets the memory format)."""
    t, mean = spec["train"], (spec.get("normalize") or [None])[0]
    if not t["batch_augment"]:
        return build_augment(t["augment"], spec["image_size"], mean), BatchAugment(None, t["channels_last"])
    per_image, colour = split_augment(t["augment"], spec["image_size"], mean)
    return per_image, BatchAugment(colour, t["channels_last"])


def learning_rate(train: dict, epoch: int) -> float:
    """``constant``, or ``cosine`` annealing restarted ``cycles`` times (ANCOR/SCGM's
    ``--cos --num-cycles 10``: lr * (1 + cos(pi * (e mod P) / P)) / 2, P = epochs // cycles)."""
    if train["schedule"] == "constant":
        return train["lr"]
    period = max(1, train["epochs"] // train["cycles"])
    return train["lr"] * 0.5 * (1 + math.cos(math.pi * (epoch % period) / period))


def _optimizer(spec, method):
    """The configured optimizer over the method's parameter groups (``Method.param_groups``)."""
    t = spec["train"]
    groups = []
    for group in method.param_groups():
        group = {"lr_scale": 1.0, **group}
        if "lr" in group:  # an absolute learning rate stays fixed under the schedule
            group["lr_scale"] = None
        groups.append(group)
    if t["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=t["lr"], momentum=t["momentum"], nesterov=t["nesterov"], weight_decay=t["weight_decay"])
    for group in groups:
        group.pop("momentum", None)  # the Adam family has no momentum setting
    if t["optimizer"] == "adamp":  # STML's optimizer (its main.py: AdamP(..., nesterov=True))
        from adamp import AdamP

        return AdamP(groups, lr=t["lr"], weight_decay=t["weight_decay"], nesterov=t["nesterov"])
    adam = torch.optim.AdamW if t["optimizer"] == "adamw" else torch.optim.Adam
    return adam(groups, lr=t["lr"], weight_decay=t["weight_decay"])


def autocast_dtype(precision: str, device: torch.device):
    """The autocast dtype of ``train.precision`` on ``device``; None for fp32, for fp16 off
    CUDA (fp16 autocast with a gradient scaler is a CUDA recipe; there it runs in fp32) and for
    bf16 on a GPU without bf16 (before Ampere: fp32, saying so)."""
    if precision == "fp16" and device.type != "cuda":
        return None
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        _say(f"train.precision bf16: {torch.cuda.get_device_name(device)} has no bf16; training in fp32")
        return None
    return AUTOCAST_DTYPES[precision]


def is_convolutional(module: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.Conv2d) for m in module.modules())


def set_layout(method, train: dict):
    """``train.channels_last`` (convolutional backbones only: elsewhere it changes nothing) and
    ``train.compile`` (the backbone compiled in place: the state dict keeps its keys)."""
    if train["channels_last"] and is_convolutional(method):
        method.to(memory_format=torch.channels_last)
    if train["compile"]:
        method.backbone.compile()


def _autocast(device: torch.device, dtype):
    """Autocast to ``dtype``; None: no autocast at all (the plain fp32 path)."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _set_learning_rate(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        if group["lr_scale"] is not None:
            group["lr"] = lr * group["lr_scale"]


def _write_log(rows, path):
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for row in rows for k in row))
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _save(obj, path):
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Temporary files of writes a kill interrupted (``atomic_path`` names them ``.<name>.*.tmp*``);
    the files they were meant to replace are intact."""
    for name in (CHECKPOINT, "model.pt", "train_log.csv", "config.yaml"):
        for tmp in out_dir.glob(f".{name}.*.tmp*"):
            tmp.unlink(missing_ok=True)


class _Run:
    """State of one training run: what a checkpoint holds, and how its batches reach the device
    (``augment``: the BatchAugment; ``seed``: the run's seed, which seeds it)."""

    def __init__(self, method, optimizer, scaler, augment=None, seed=0):
        self.method, self.optimizer, self.scaler = method, optimizer, scaler
        self.augment, self.seed = augment or BatchAugment(None), seed
        self.hinted = False  # the data-waiting hint is printed once a run
        self.epoch = 0  # epochs completed
        self.best = {"epoch": None, "score": -float("inf"), "state": None}
        self.log = []
        self.provenance = ""  # fgbench.provenance.run_hash of the run: in its checkpoint and model.pt

    def state(self, digest):
        return {
            "spec_hash": digest, "epoch": self.epoch, "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
            "best": self.best, "log": self.log,
        }

    def restore(self, ckpt):
        self.method.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.best, self.log = ckpt["epoch"], ckpt["best"], ckpt["log"]


class _Waits:
    """``loader``'s batches, adding up the seconds spent waiting for them and the images they
    hold (of the global batch: one count per sample, whatever its number of views)."""

    def __init__(self, loader):
        self.loader, self.seconds, self.images = loader, 0.0, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        started = time.perf_counter()
        batches = iter(self.loader)  # starts the workers: waiting too
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.seconds += time.perf_counter() - started
            self.images += len(batch["labels"])
            yield batch
            started = time.perf_counter()


def _train_epoch(run, step_module, loader, device, dtype, epoch):
    """One pass over ``loader``; ``step_module(batch)`` is the method's training step (in DDP
    under torchrun), autocast to ``dtype`` (None: fp32). Returns the epoch's mean loss and logs,
    averaged over the ranks, its images per second and the fraction of its time spent waiting
    for the loader (``data_wait``)."""
    step_module.train()
    totals, steps = {}, 0
    started, waits = time.perf_counter(), _Waits(loader)
    batches = _device_batches(waits, device, run.augment, (run.seed, epoch, 0))
    progress = tqdm(batches, total=len(loader), desc=f"epoch {epoch}", mininterval=10, leave=False, disable=not distributed.is_main())
    for step, batch in enumerate(progress):
        with _autocast(device, dtype):
            loss, logs = step_module(batch)
        # the mean over the ranks: the global batch's loss (for per-sample means over equal
        # slices), and the same verdict on every rank, so that all of them stop together
        values = distributed.mean_over_ranks(torch.tensor([loss.item(), *logs.values()], dtype=torch.float64))
        if not math.isfinite(values[0]):
            kept = (f"the checkpoint of the last completed epoch ({run.epoch - 1}) is kept; lower the learning "
                    "rate and rerun to resume from it") if run.epoch else "no epoch completed, so no checkpoint exists"
            raise TrainingError(f"the loss became {values[0].item()} at epoch {epoch}, step {step}; {kept}")
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        for k, v in zip(["loss", *logs], values.tolist()):
            totals[k] = totals.get(k, 0.0) + v
        steps += 1
    seconds = time.perf_counter() - started
    return {**{k: v / max(steps, 1) for k, v in totals.items()},
            "images_per_s": round(waits.images / seconds, 1), "data_wait": round(waits.seconds / seconds, 4)}


def _validation_score(method, spec, val, device):
    """Recall@1 of the evaluated layer on the validation split, with the training labels
    (never fine labels in coarse-to-fine, never the test split). None for label-free methods,
    which then keep their last epoch."""
    if get_method_class(spec["method"]).labels == "none":
        return None
    _, labels = training_labels(spec, val)
    layer = spec["embed_layers"][0]
    transform = build_augment(spec["eval_transform"], spec["image_size"])
    feats = embed_images(method, val.images, [layer], device, transform=transform, num_workers=spec["train"]["num_workers"])[layer]
    _, neighbours = nearest_neighbours(feats, 1, metric=spec["metric"])
    return recall_at_k(labels.numpy(), neighbours, ks=(1,))[1]


def train(spec: dict, data_path, out_dir) -> None:
    """Train ``spec`` (see config.train_spec) on the prepared data; write model.pt,
    train_log.csv and config.yaml into ``out_dir``, resuming from its checkpoint if any. Under
    torchrun, this process is one rank of a DDP group (see ``distributed``)."""
    device = distributed.worker_device(pick_device(spec["train"]["device"]))
    with distributed.process_group(device):
        _train(spec, data_path, Path(out_dir), device)


def _train(spec, data_path, out_dir, device):
    main, world = distributed.is_main(), distributed.world_size()
    distributed.check_batch_size(spec["train"]["batch_size"], world)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(out_dir)
    dtype = autocast_dtype(spec["train"]["precision"], device)
    train_split, val_split, classes, labels, data_hash = _splits(spec, data_path)
    input_shape = image_shape(spec, train_split.images)
    views = get_method_class(spec["method"]).views
    augment, device_side = training_augment(spec)
    dataset = ImageDataset(train_split.images, labels, augment, views=views, uint8=spec["train"]["batch_augment"])

    seed_everything(spec["seed"])
    method = build_model(spec, len(classes), *input_shape, len(dataset)).to(device)
    set_layout(method, spec["train"])
    group_size = spec["train"]["bn_group_size"]
    if group_size:  # the releases' per-GPU BatchNorm, in this process too
        method = distributed.group_batchnorm(method, group_size)
    elif world > 1 and not method.shuffle_bn:
        method = distributed.sync_batchnorm(method, device)
    # bf16 keeps fp32's exponent range: only fp16 needs the gradient scaler
    run = _Run(method, _optimizer(spec, method), torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
               device_side, spec["seed"])
    # provenance: the spec, the prepared data and the code; a checkpoint of anything else is not resumed
    digest, ckpt_path = run_hash(spec_hash(spec), data_hash), out_dir / CHECKPOINT
    run.provenance = digest
    _resume(run, ckpt_path, digest, device)
    if main:
        _announce(spec, device, world)
    step_module = distributed.wrap(method, device)

    for epoch in range(run.epoch, spec["train"]["epochs"]):
        started = time.time()
        generator = _start_epoch(run, spec, epoch)

        passes = itertools.count(1)  # the epoch hook's passes: streams 1, 2, ... of batch_seed

        def batches(augment=True):
            if augment:
                source = _loader(spec, dataset, labels, generator, whole_set=True)
            else:
                source = _plain_batches(spec, train_split.images, labels)
            return _device_batches(source, device, run.augment, (spec["seed"], epoch, next(passes)), even=False)

        run.method.on_epoch_start(epoch, batches)
        own = run.method.batch_sampler(spec["train"]["batch_size"], generator)
        stats = _train_epoch(run, step_module, _loader(spec, dataset, labels, generator, batches=own), device, dtype, epoch)
        run.epoch = epoch + 1
        if main:
            _finish_epoch(run, spec, val_split, device, epoch, stats, started)
            _save(run.state(digest), ckpt_path)

    if main:
        _write_outputs(run, spec, out_dir, {"num_classes": len(classes), "num_samples": len(dataset), "input_shape": input_shape})
        ckpt_path.unlink()  # the run is complete; model.pt holds the selected weights


def _splits(spec, data_path):
    """(train split, validation split, training classes, training labels, data hash) of the
    setting.

    A label-free method (STML, MoCo) keeps its last epoch, so nothing is selected on the
    validation images: they join its training set, as in those releases (all training images)."""
    data = load_prepared(data_path)
    setting = spec["setting_def"]
    train_split = data.splits["train"]
    if get_method_class(spec["method"]).labels == "none":
        train_split = train_split.join(data.splits["val"])
    train_split = train_split.with_classes(setting["train_classes"])
    val_split = data.splits["val"].with_classes(setting["train_classes"])
    classes, labels = training_labels(spec, train_split)
    if spec["train"]["label_noise"]:  # training labels only; the run's seed fixes the flips
        labels = torch.from_numpy(symmetric_label_noise(labels.numpy(), spec["train"]["label_noise"], spec["seed"]))
    return train_split, val_split, classes, labels, data.data_hash


def _announce(spec, device, world) -> None:
    print(f"training {spec['method']} on {device}", flush=True)
    if distributed.active():
        batch = spec["train"]["batch_size"]
        print(f"distributed: {world} process{'es' if world > 1 else ''} ({torch.distributed.get_backend()}), "
              f"{batch // world} samples each of every global batch of {batch}", flush=True)


def _say(message: str) -> None:
    if distributed.is_main():
        print(message, flush=True)


def _set_aside(ckpt_path, why: str) -> None:
    """Rename a checkpoint that cannot be resumed out of the way (kept for inspection; never a
    run blocked by a file the user must find and delete)."""
    aside = ckpt_path.with_name(ckpt_path.name + ".unreadable")
    _say(f"{ckpt_path} is unreadable ({why}); set aside as {aside.name}, training starts over from epoch 0")
    distributed.barrier()  # every rank has tried to read it before rank 0 renames it
    if distributed.is_main():
        ckpt_path.replace(aside)


CHECKPOINT_KEYS = {"spec_hash", "epoch", "model", "optimizer", "scaler", "best", "log"}


def _resume(run, ckpt_path, digest, device) -> None:
    """Every rank loads the checkpoint (rank 0 wrote it). A checkpoint of another train spec,
    prepared data or code version is not resumed, and an unreadable one is set aside: both start
    over from epoch 0, saying so."""
    if not ckpt_path.exists():
        return
    try:
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
    except Exception as e:  # truncated zip, unpickling errors, ...
        return _set_aside(ckpt_path, f"{type(e).__name__}: {e}")
    if not isinstance(ckpt, dict) or not CHECKPOINT_KEYS <= set(ckpt):
        return _set_aside(ckpt_path, "not an fgbench checkpoint")
    if ckpt["spec_hash"] != digest:
        _say(f"not resuming {ckpt_path}: it was written for another train spec, prepared data or fgbench code "
             f"(provenance {ckpt['spec_hash']}, this run {digest}); training starts over from epoch 0")
        return
    run.restore(ckpt)
    _say(f"resuming from {ckpt_path} after epoch {run.epoch}")


def _start_epoch(run, spec, epoch):
    """Seed everything from (seed, epoch), set the epoch's learning rate; return the epoch's
    batch generator."""
    seed_everything(epoch_seed(spec["seed"], epoch))
    _set_learning_rate(run.optimizer, learning_rate(spec["train"], epoch))
    run.method.train()
    return torch.Generator().manual_seed(epoch_seed(spec["seed"], epoch))


def _finish_epoch(run, spec, val_split, device, epoch, stats, started) -> None:
    """Rank 0: score on validation, keep the best state, log the epoch."""
    score = _validation_score(run.method, spec, val_split, device)
    if score is None or score > run.best["score"]:
        run.best = {"epoch": epoch, "score": score if score is not None else -float("inf"),
                    "state": {k: v.detach().cpu().clone() for k, v in run.method.inference_state().items()}}
    throughput = {k: stats.pop(k) for k in ("images_per_s", "data_wait")}
    run.log.append({"epoch": epoch, "lr": learning_rate(spec["train"], epoch), **stats, "val_recall@1": score,
                    "seconds": round(time.time() - started, 2), **throughput})
    print(f"epoch {epoch}: " + ", ".join(f"{k}={v:.4g}" for k, v in run.log[-1].items() if isinstance(v, float)), flush=True)
    if throughput["data_wait"] > DATA_WAIT_HINT and not run.hinted:
        run.hinted = True
        print(data_wait_hint(spec["train"], epoch, throughput["data_wait"]), flush=True)


def data_wait_hint(train: dict, epoch: int, wait: float) -> str:
    """One line: the loop starved for data, and the settings that feed it faster."""
    colour = "" if train["batch_augment"] else ", train.batch_augment: true (colour augmentation on the training device)"
    return (f"hint: epoch {epoch} waited for data {wait:.0%} of its step time; feed it faster with more DataLoader "
            f"workers (train.num_workers: {train['num_workers']} now), the decoded-image store "
            f"(datasets.<name>.store: resized){colour}")


def _write_outputs(run, spec, out_dir, shapes: dict) -> None:
    """model.pt (the selected weights), train_log.csv and config.yaml."""
    _save({"spec": spec, "state_dict": run.best["state"], "best_epoch": run.best["epoch"], **shapes,
           "fgbench_version": __version__, "provenance": run.provenance},
          out_dir / "model.pt")
    _write_log(run.log, out_dir / "train_log.csv")
    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump({**spec, "best_epoch": run.best["epoch"]}, sort_keys=False))
