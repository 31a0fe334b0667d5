"""Training options the paper recipes need: the optimizers (AdamP, AdamW), precision, the
class-balanced sampler without replacement, label-free runs on train + val, keeping the last
partial batch, and the per-method retrieval distance in validation."""

import copy

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, prepared_fashion
from fgbench import config as fgconfig
from fgbench.data import Split, load_prepared
from fgbench.data.images import ImageFiles, JoinedImages, MappedRows, join_images
from fgbench.data.samplers import ClassRandomBatchSampler
from fgbench.data.transforms import ImageDataset
from fgbench.methods import build_method
from fgbench.models import get_backbone
from fgbench.train import loop
from fgbench.train.loop import _autocast, _loader, _optimizer, _set_learning_rate, autocast_dtype


# --- optimizers --------------------------------------------------------------------------------
def stml(head_lr_scale=0.2):
    torch.manual_seed(0)
    return build_method("stml", get_backbone("small_cnn"), num_classes=2, num_samples=8, epochs=1,
                        params={"embedding_dim": 4, "g_dim": 6, "head_lr_scale": head_lr_scale})


def two_steps(method, optimizer):
    """Two steps on fixed images; the loss reaches every student parameter."""
    images = torch.randn(2, 6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    for x in images:
        optimizer.zero_grad()
        s_f, s_g = method.student(x)
        (s_f.pow(2).sum() + s_g.sin().sum()).backward()
        optimizer.step()


@pytest.mark.parametrize("name", ["adamp", "adamw"])
def test_optimizer_builder_equals_the_optimizer_built_by_hand(name):
    """tjddus9597/STML-CVPR22 code/main.py: AdamP(param_groups, lr, weight_decay, nesterov=True),
    the heads' group at --emb-lr; AdamW the same way. fgbench's builder (through the loop's
    learning-rate setter, as an epoch starts) must take the same steps."""
    import adamp

    lr, wd = 5e-4, 1e-2
    ours, theirs = stml(), stml()
    spec = {"train": {"optimizer": name, "lr": lr, "weight_decay": wd, "nesterov": True, "momentum": 0.9}}
    optimizer = _optimizer(spec, ours)
    _set_learning_rate(optimizer, lr)
    groups = [{"params": list(theirs.backbone.parameters())},
              {"params": [*theirs.head.parameters(), *theirs.head_g.parameters()], "lr": 0.2 * lr}]
    if name == "adamp":
        reference = adamp.AdamP(groups, lr=lr, weight_decay=wd, nesterov=True)
    else:
        reference = torch.optim.AdamW(groups, lr=lr, weight_decay=wd)
    two_steps(ours, optimizer)
    two_steps(theirs, reference)
    assert type(optimizer) is type(reference)
    for (key, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert torch.equal(a, b), key


def test_adamw_decays_weights_decoupled_from_the_gradient():
    """Decoupled decay: with a zero gradient AdamW shrinks a weight by exactly lr x wd; Adam's
    coupled decay (L2 in the gradient) moves it by about lr, whatever its size."""
    lr, wd = 1e-3, 1e-2
    for name, expected in (("adamw", 1 - lr * wd), ("adam", None)):
        method = stml(head_lr_scale=1.0)
        before = method.head.weight.detach().clone()
        optimizer = _optimizer({"train": {"optimizer": name, "lr": lr, "weight_decay": wd, "nesterov": False}}, method)
        _set_learning_rate(optimizer, lr)
        for p in method.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        if expected is not None:
            torch.testing.assert_close(method.head.weight, before * expected, rtol=0, atol=1e-9)
        else:  # Adam: the gradient is wd * w, and a first step is lr * g / (|g| + eps)
            g = wd * before
            torch.testing.assert_close(method.head.weight, before - lr * g / (g.abs() + 1e-8), rtol=0, atol=1e-7)


# --- precision ---------------------------------------------------------------------------------
def supervised_batch():
    torch.manual_seed(0)
    method = build_method("supervised_coarse", get_backbone("small_cnn"), num_classes=4, num_samples=32, epochs=1, params={})
    g = torch.Generator().manual_seed(3)
    batch = {"images": torch.rand(32, 1, 28, 28, generator=g), "labels": torch.randint(4, (32,), generator=g),
             "index": torch.arange(32)}
    return method, batch


def loss_and_grads(method, batch, context):
    method.zero_grad()
    with context:
        loss, _ = method.training_step(batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in method.parameters()]


def test_bf16_loss_matches_fp32_and_fp32_is_the_plain_path():
    cpu = torch.device("cpu")
    method, batch = supervised_batch()
    fp32, grads32 = loss_and_grads(method, batch, _autocast(cpu, autocast_dtype("fp32", cpu)))
    # fp32 is exactly the path of the former `amp` switch turned off
    old, old_grads = loss_and_grads(method, batch, torch.autocast("cpu", dtype=torch.float16, enabled=False))
    assert torch.equal(fp32, old) and all(torch.equal(a, b) for a, b in zip(grads32, old_grads))
    bf16, grads16 = loss_and_grads(method, batch, _autocast(cpu, autocast_dtype("bf16", cpu)))
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)  # autocast ran, in bfloat16
    torch.testing.assert_close(bf16, fp32, rtol=2e-2, atol=0)
    assert all(g.dtype == torch.float32 for g in grads16)  # the weights and their gradients stay fp32


def test_precision_picks_autocast_and_scaler():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("fp32", cuda) is None and autocast_dtype("bf16", cpu) is torch.bfloat16
    assert autocast_dtype("fp16", cuda) is torch.float16
    assert autocast_dtype("fp16", cpu) is None  # fp16 with a scaler is a CUDA recipe


def test_bf16_run_trains_under_autocast_without_a_scaler(tmp_path, monkeypatch):
    from fgbench.methods.supervised import SupervisedCoarse

    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["train"].update(epochs=1, device="cpu", precision="bf16")
    spec = fgconfig.train_spec(fgconfig.validate(cfg), "fashion_mnist", "coarse_to_fine", "supervised_coarse", 0)
    seen, original = [], SupervisedCoarse.training_step

    def recording_step(self, batch):
        seen.append(torch.is_autocast_enabled("cpu"))
        return original(self, batch)

    scalers = []
    monkeypatch.setattr(SupervisedCoarse, "training_step", recording_step)
    monkeypatch.setattr(loop, "_Run", lambda m, o, s, *rest: scalers.append(s) or _RealRun(m, o, s, *rest))
    loop.train(spec, prepared_fashion(tmp_path, n_train=60, n_test=5), tmp_path / "out")
    assert seen and all(seen) and not scalers[0].is_enabled()


_RealRun = loop._Run


# --- class_random without replacement (vMF's episodes) -----------------------------------------
def sampled(replacement, labels, batch_size=8, samples_per_class=2):
    sampler = ClassRandomBatchSampler(labels, batch_size=batch_size, samples_per_class=samples_per_class,
                                      generator=torch.Generator().manual_seed(0), replacement=replacement)
    return list(sampler)


def test_class_random_without_replacement_is_the_release_episode():
    """google-research/vmf_embeddings datasets/utils.py EpisodicBatchSampler: n classes drawn
    without replacement, then min(k, class size) images of each without replacement; episodes
    are drawn independently (an image can recur in a later batch of the same epoch)."""
    labels = np.repeat(np.arange(6), [1, 2, 3, 4, 5, 9])  # class 0 has one image, class 5 nine
    batches = sampled(False, labels, batch_size=8, samples_per_class=2)
    assert len(batches) == len(labels) // 8
    for batch in batches:
        classes = labels[batch]
        assert len(set(batch)) == len(batch)  # no image twice in a batch
        assert len(set(classes)) == 4  # 4 distinct classes
        for c in set(classes):
            assert (classes == c).sum() == min(2, (labels == c).sum())
    # RevDML's draw with replacement repeats images of small classes in a batch
    with_replacement = sampled(True, labels, batch_size=8, samples_per_class=2)
    assert any(len(set(b)) < len(b) for b in with_replacement)


def test_without_replacement_batches_recur_across_an_epoch_like_independent_episodes():
    labels = np.repeat(np.arange(32), 2)  # SOP-like: 2 images per class
    batches = sampled(False, labels, batch_size=16, samples_per_class=2)
    assert all(sorted(labels[b]) == sorted(np.repeat(np.unique(labels[b]), 2)) for b in batches)
    seen = [i for b in batches for i in b]
    assert len(set(seen)) < len(seen)  # independent episodes, not one permutation of the epoch


# --- keeping the last partial batch (SCGM) -----------------------------------------------------
def random_batches(n, batch_size, drop_last):
    spec = {"train": {"sampler": "random", "batch_size": batch_size, "drop_last": drop_last, "num_workers": 0}}
    dataset = ImageDataset(np.zeros((n, 4, 4), np.uint8), torch.zeros(n, dtype=torch.long), None)
    return [len(b["index"]) for b in _loader(spec, dataset, None, torch.Generator().manual_seed(0))]


def test_drop_last_false_keeps_the_partial_batch_as_scgm():
    """nijingchao/SCGM utils/utils.py: its training DataLoader keeps the last partial batch."""
    assert random_batches(10, 4, drop_last=False) == [4, 4, 2]
    assert random_batches(10, 4, drop_last=True) == [4, 4]
    # a lone last image cannot be normalised by BatchNorm in training mode: dropped
    assert random_batches(9, 4, drop_last=False) == [4, 4]


# --- label-free methods train on train + val ----------------------------------------------------
def test_label_free_methods_train_on_train_and_val(tmp_path):
    data = prepared_fashion(tmp_path, n_train=60, n_test=5)
    splits = load_prepared(data).splits
    cfg = fgconfig.validate(yaml.safe_load((REPO / "config.yaml").read_text()))
    for method, setting, expected in (("moco", "coarse_to_fine", len(splits["train"]) + len(splits["val"])),
                                      ("supervised_coarse", "coarse_to_fine", len(splits["train"]))):
        train, _, _, labels, _ = loop._splits(fgconfig.train_spec(cfg, "fashion_mnist", setting, method, 0), data)
        assert len(train) == len(train.images) == len(labels) == expected, method
    # open set: the validation images of the training classes join, no others
    train, *_ = loop._splits(fgconfig.train_spec(cfg, "fashion_mnist", "open_set", "stml", 0), data)
    both = np.concatenate([splits["train"].fine, splits["val"].fine])
    assert len(train) == np.isin(both, [0, 1, 2, 3, 4]).sum() and set(train.fine) <= {0, 1, 2, 3, 4}
    joined = np.concatenate([splits["train"].images, splits["val"].images])
    np.testing.assert_array_equal(train.images, joined[np.isin(both, [0, 1, 2, 3, 4])])


def test_joined_images_read_every_container(tmp_path):
    arrays = [np.arange(i * 8, i * 8 + 8, dtype=np.uint8).reshape(2, 2, 2) for i in range(2)]
    for part, a in zip("ab", arrays):
        np.save(tmp_path / f"{part}.npy", a)
    maps = [np.load(tmp_path / f"{p}.npy", mmap_mode="r") for p in "ab"]
    joined = join_images(*maps)
    assert isinstance(joined, JoinedImages) and isinstance(joined.parts[0], MappedRows)
    expected = np.concatenate(arrays)
    assert joined.shape == expected.shape and all(np.array_equal(joined[i], expected[i]) for i in range(4))
    subset = joined[np.array([3, 0])]
    assert np.array_equal(subset[0], expected[3]) and np.array_equal(subset[1], expected[0])
    files = join_images(ImageFiles(tmp_path, ["x.png"]), ImageFiles(tmp_path, ["y.png"]))
    assert isinstance(files, ImageFiles) and list(files.paths) == ["x.png", "y.png"]
    split = Split(maps[0], np.array([0, 1]), np.array([0, 0]), np.array([5, 6]))
    both = split.join(Split(maps[1], np.array([2, 3]), np.array([1, 1]), np.array([7, 8])))
    assert both.index.tolist() == [5, 6, 7, 8] and np.array_equal(both.images[3], expected[3])


# --- the method's retrieval distance in validation ----------------------------------------------
def test_validation_uses_the_method_metric(monkeypatch):
    calls = []
    monkeypatch.setattr(loop, "nearest_neighbours", lambda feats, k, metric: calls.append(metric) or (None, np.zeros((len(feats), 1), int)))
    monkeypatch.setattr(loop, "embed_images", lambda *a, **k: {"head": np.zeros((4, 2), np.float32)})
    cfg = fgconfig.validate(yaml.safe_load((REPO / "config.yaml").read_text()))
    val = Split(np.zeros((4, 28, 28), np.uint8), np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1]), np.arange(4))
    for metric in ("euclidean", "cosine"):
        cfg = copy.deepcopy(cfg)
        cfg["methods"]["triplet"]["metric"] = metric
        spec = fgconfig.train_spec(cfg, "fashion_mnist", "open_set", "triplet", 0)
        loop._validation_score(None, spec, val, torch.device("cpu"))
    assert calls == ["euclidean", "cosine"]
