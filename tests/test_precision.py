"""Precision and layout of the training step (fgbench.train.loop: autocast_dtype, set_layout): on
a fixed batch, bf16 autocast, channels-last and torch.compile give the fp32 loss within tolerance,
and the gradients of channels-last match."""

import copy

import pytest
import torch
import yaml

from conftest import REPO
from fgbench import config as fgconfig
from fgbench.train import loop

pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def model_and_batch(**train):
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["train"].update(device="cpu", **train)
    spec = fgconfig.train_spec(fgconfig.validate(cfg), "fashion_mnist", "coarse_to_fine", "supervised_coarse", 0)
    torch.manual_seed(0)
    method = loop.build_model(spec, 5, 3, 28, 64).train()  # 3 channels: channels-last differs from contiguous
    generator = torch.Generator().manual_seed(1)
    batch = {"images": torch.rand(32, 3, 28, 28, generator=generator), "labels": torch.arange(32) % 5,
             "index": torch.arange(32)}
    return method, batch, spec


def loss_and_grads(method, batch, dtype=None):
    with loop._autocast(torch.device("cpu"), dtype):
        loss, _ = method.training_step(batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}


def test_bf16_autocast_loss_matches_fp32():
    method, batch, _ = model_and_batch()
    ref, _ = loss_and_grads(copy.deepcopy(method), batch)
    dtype = loop.autocast_dtype("bf16", torch.device("cpu"))
    assert dtype == torch.bfloat16
    bf16, _ = loss_and_grads(method, batch, dtype)
    assert bf16 == pytest.approx(ref, rel=2e-2)  # bf16 keeps 8 bits of mantissa
    assert bf16 != ref  # the step did run in bf16


def test_channels_last_gives_the_fp32_loss_and_gradients():
    method, batch, spec = model_and_batch(channels_last=True)
    ref, ref_grads = loss_and_grads(copy.deepcopy(method), batch)
    loop.set_layout(method, spec["train"])
    conv = next(m for m in method.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    images = loop.BatchAugment(None, channels_last=True).apply(batch)["images"]
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    loss, grads = loss_and_grads(method, {**batch, "images": images})
    assert loss == pytest.approx(ref, rel=1e-5)
    flat, ref_flat = (torch.cat([g[n].flatten() for n in ref_grads]) for g in (grads, ref_grads))
    # another summation order: within 1e-4 of the largest gradient (a conv bias before BatchNorm
    # has a gradient of zero up to rounding)
    torch.testing.assert_close(flat, ref_flat, rtol=1e-3, atol=1e-4 * ref_flat.abs().max().item())


def test_compile_gives_the_fp32_loss(monkeypatch):
    """torch.compile of the backbone, in place (the state dict keeps its keys). Inductor's C++
    code generation took 105 s on this project's 2 CI cores (a small CNN), so the test traces
    with TorchDynamo and AOT autograd and runs the graphs eagerly (backend aot_eager): the
    same capture, without the C++ compiler; benchmarks/gpu_check.sh compiles with inductor on
    CUDA."""
    method, batch, spec = model_and_batch(compile=True)
    ref, _ = loss_and_grads(copy.deepcopy(method), batch)
    keys = list(method.state_dict())
    compile_module = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compile_module(self, backend="aot_eager", **kw))
    torch._dynamo.reset()
    loop.set_layout(method, spec["train"])
    loss, _ = loss_and_grads(method, batch)
    assert list(method.state_dict()) == keys
    assert method.backbone._compiled_call_impl is not None
    assert loss == pytest.approx(ref, rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_channels_last_and_inductor_on_cuda_give_the_fp32_loss():
    method, batch, spec = model_and_batch(channels_last=True, compile=True)
    device = torch.device("cuda")
    method, batch = method.to(device), {k: v.to(device) for k, v in batch.items()}
    with loop._autocast(device, None):
        ref = method.training_step(batch)[0].item()
    assert loop.autocast_dtype("bf16", device) == torch.bfloat16
    loop.set_layout(method, spec["train"])  # channels-last, and torch.compile with inductor
    images = loop.BatchAugment(None, channels_last=True).apply(batch)["images"]
    with loop._autocast(device, torch.bfloat16):
        loss = method.training_step({**batch, "images": images})[0]
    loss.backward()
    assert loss.item() == pytest.approx(ref, rel=2e-2)
