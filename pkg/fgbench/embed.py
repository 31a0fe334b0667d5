"""Embeddings of a split -> .npz: per-layer features, fine and coarse labels, index, class names,
and augmented views.

Every layer the run's config names (``embed_layer``: e.g. backbone and head, ANCOR's and SCGM's
few-shot features) gets ``features_{layer}`` (N, D); the test split also gets ``views``
augmented copies of every image (``aug_features_{layer}``, (N, views, D)), so few-shot episodes
read augmented support features from arrays and never run the network: evaluation costs the
same for every method. View j of image i is seeded by (view_seed, j, the image's index in the
official split), so every method sees the same views.
"""

import numpy as np
import torch

from .data import load_prepared
from .data.transforms import build_augment
from .errors import TrainingError
from .evaluate import non_finite
from .io import atomic_path
from .provenance import code_version, digest
from .train.loop import embed_images, load_model, pick_device


def view_seed(base: int, view: int, index: int) -> int:
    return (base * 1000 + view) * 100_000_000 + int(index)


def embed_split(model_path, data_path, split: str, spec: dict, out_path, device="auto") -> None:
    """Write the embeddings of ``split`` (restricted to the setting's test classes for the test
    split) for every configured layer."""
    device = pick_device(device)
    method, run_spec, model_provenance = load_model(model_path, device, provenance=True)
    data = load_prepared(data_path)
    part = setting_part(data, run_spec["setting_def"], split)
    arrays = embedding_arrays(method, run_spec["embed_layers"], data, part, split, spec, device,
                              eval_transform=run_spec["eval_transform"], image_size=run_spec["image_size"],
                              num_workers=run_spec["train"]["num_workers"])
    # what these features depend on: the model (its spec, data and code), the data embedded, the code
    arrays["provenance"] = np.str_(digest(model_provenance, data.data_hash, spec, split, code_version()))
    bad = non_finite(arrays)
    if bad:
        layer, count = next(iter(bad.items()))
        raise TrainingError(f"layer '{layer}' of {model_path} gives {count} non-finite values (NaN or inf) on the "
                            f"{split} split: the trained weights are broken; delete {model_path} and retrain "
                            "(a lower train.lr often helps)")
    save_embeddings(arrays, out_path)


def setting_part(data, setting_def: dict, split: str = "test"):
    """The images of ``split`` a setting embeds: its test classes (test split), else its training classes."""
    return data.splits[split].with_classes(setting_def["test_classes" if split == "test" else "train_classes"])


def label_arrays(data, part) -> dict:
    """The labels, index and class names of an embedded split (every embeddings file has them)."""
    return {"fine": part.fine, "coarse": part.coarse, "index": part.index,
            "fine_names": np.array(data.fine_names), "coarse_names": np.array(data.coarse_names)}


def embedding_arrays(method, layers, data, part, split: str, spec: dict, device, *, eval_transform: str,
                     image_size: int, num_workers: int = 0) -> dict:
    """The arrays of an embeddings file (less its provenance) for anything with ``embed(images,
    layer)``: a trained method or an external model (fgbench.external). Plain features through
    ``eval_transform``; for the test split, ``spec['views']`` support views through the dataset's
    ``view_augment``, view j of image i seeded by (view_seed, j, index): the same for every model."""
    options = {"batch_size": spec["batch_size"], "num_workers": num_workers}
    plain = embed_images(method, part.images, layers, device, transform=build_augment(eval_transform, image_size), **options)
    arrays = {"layers": np.array(layers), **label_arrays(data, part),
              **{f"features_{layer}": plain[layer] for layer in layers}}
    if split == "test" and spec["views"] > 0:
        augment = build_augment(spec["view_augment"], image_size)
        per_view = []
        with torch.random.fork_rng(devices=[]):  # the per-image seeds leave the caller's RNG alone
            for j in range(spec["views"]):
                seeds = [view_seed(spec["view_seed"], j, i) for i in part.index]
                per_view.append(embed_images(method, part.images, layers, device, transform=augment, seeds=seeds, **options))
        for layer in layers:
            arrays[f"aug_features_{layer}"] = np.stack([v[layer] for v in per_view], axis=1)
    return arrays


def save_embeddings(arrays: dict, out_path) -> None:
    with atomic_path(out_path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
