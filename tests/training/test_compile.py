"""``compile: True``: the Brain wraps the separator (only) in ``torch.compile``, under DDP,
and the compiled separator computes what the eager one does, values and gradients.

Inductor's first compile is slow on 2 cores (gcc per graph; later runs hit its cache), and
the CPU kernels cut a Conv-TasNet into a graph between every two kernel calls. So the kernels-on model
(what ``compile: True`` trains) is checked with the ``aot_eager`` backend: Dynamo's
capture, the graph breaks around the kernels and AOTAutograd's backward, without code
generation; inductor's generated code is checked on the kernels-off model, which is one
forward and one backward graph.
"""

import copy
import functools
from types import SimpleNamespace

import pytest
import speechbrain as sb
import torch

from spksep_modules.losses import SeparationLoss
from spksep_modules.models import ConvTasNet
from spksep_modules.nnet.cpu_kernels import FastPReLUGLN
from spksep_modules.training.brains import SeparationBrain, unwrapped

torch.set_num_threads(1)


@pytest.fixture
def one_process_group(monkeypatch):
    """A DDP group of one gloo process, as torchrun would announce it: SpeechBrain then
    wraps the separator in DistributedDataParallel."""
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29531"}.items():
        monkeypatch.setenv(name, value)
    torch.distributed.init_process_group("gloo", rank=0, world_size=1)
    yield
    torch.distributed.destroy_process_group()


def make_batch(mix, sources):
    batch = SimpleNamespace(mix_sig=SimpleNamespace(data=mix), sources=SimpleNamespace(data=sources),
                            id=["a", "b"])
    batch.to = lambda device: batch
    return batch


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


def brain_with_compiled(model, loss):
    brain = SeparationBrain(
        modules={"separator": model, "loss": loss},
        opt_class=lambda params: torch.optim.SGD(params, lr=0.01),
        run_opts={"device": "cpu", "compile": True, "distributed_backend": "gloo"},
    )
    brain.on_fit_start()  # compiles, then wraps in DDP when a process group is announced
    return brain


def check_against_eager(brain, model, eager, loss):
    """Output and gradients of the Brain's (compiled) separator against ``eager``; then a
    training step through ``fit_batch`` and validation on the eager, folded form."""
    gen = torch.Generator().manual_seed(1)
    sources = torch.randn(2, 800, 2, generator=gen)
    mix = sources.sum(-1)
    out = brain.modules.separator(mix)
    want = eager(mix)
    assert torch.allclose(out, want, atol=1e-5, rtol=1e-4)
    loss(out, sources)["loss"].backward()
    loss(want, sources)["loss"].backward()
    for got, ref in zip(grads(model), grads(eager)):
        assert torch.allclose(got, ref, rtol=1e-3, atol=1e-5 * float(ref.abs().max()) + 1e-8)

    brain.zero_grad(set_to_none=True)
    brain.on_stage_start(sb.Stage.TRAIN, epoch=1)
    brain.step += 1
    assert torch.isfinite(brain.fit_batch(make_batch(mix, sources)))
    brain.on_stage_start(sb.Stage.VALID, epoch=1)
    with torch.no_grad():
        assert torch.allclose(brain.eval_separator(mix), model(mix), atol=1e-5)


def test_compile_under_ddp_with_the_cpu_kernels(one_process_group, monkeypatch):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch.manual_seed(0)
    model = ConvTasNet(N=8, L=4, B=4, H=8, P=3, X=2, R=1)  # CPU kernels on (the default)
    eager, loss = copy.deepcopy(model), SeparationLoss()
    brain = brain_with_compiled(model, loss)
    wrapped = brain.modules.separator
    # DDP around the compiled module around the model; the loss is left as it is.
    assert isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
    assert hasattr(wrapped.module, "_orig_mod") and unwrapped(wrapped) is model
    assert brain.modules.loss is loss
    assert isinstance(model.separator.blocks[0].act_norm1, FastPReLUGLN)  # kernels kept
    check_against_eager(brain, model, eager, loss)


def test_inductor_code_agrees_with_eager():
    torch.manual_seed(0)
    model = ConvTasNet(N=8, L=4, B=4, H=8, P=3, X=1, R=1, cpu_kernels=False)
    eager, loss = copy.deepcopy(model), SeparationLoss()
    brain = brain_with_compiled(model, loss)
    assert hasattr(brain.modules.separator, "_orig_mod")  # compiled, no DDP here
    check_against_eager(brain, model, eager, loss)
