"""nnet.forms: one switch between a model's layer forms, each reversible and each computing
the plain layers' function."""

import pytest
import torch

from spksep_modules.models import ConditionedSeparator, ConvTasNet
from spksep_modules.nnet.forms import as_form, forms_of, known_forms
from spksep_modules.speakers.ge2e import GE2E


def tiny(**kw):
    torch.manual_seed(0)
    return ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=2, cpu_kernels=False, **kw)


def classes(model):
    return [type(m) for m in model.modules()]


def test_every_form_is_known_and_an_unknown_one_is_refused():
    assert known_forms() == ["bf16_products", "cpu_kernels", "export", "inference"]
    with pytest.raises(ValueError, match="unknown form 'fast'"):
        as_form(tiny(), "fast")


@pytest.mark.parametrize("forms", [("cpu_kernels",), ("bf16_products",), ("export",),
                                   ("cpu_kernels", "bf16_products")])
def test_in_place_forms_are_exactly_what_is_asked_and_undo_to_the_plain_classes(forms):
    model = tiny()
    plain_classes, keys = classes(model), list(model.state_dict())
    assert as_form(model, *forms) is model and forms_of(model) == set(forms)
    assert classes(model) != plain_classes  # something switched
    tensors = [k for k in keys if not k.endswith("_extra_state")]
    assert [k for k in model.state_dict() if not k.endswith("_extra_state")] == tensors
    as_form(model, "cpu_kernels")  # exactly this one now: the others undone
    assert forms_of(model) == {"cpu_kernels"}
    as_form(model)
    assert classes(model) == plain_classes and forms_of(model) == set()
    assert list(model.state_dict()) == keys


def test_forms_compute_the_plain_layers_function_values_and_gradients():
    model, mix = tiny(), torch.randn(2, 800)
    want = model(mix)
    grads = torch.autograd.grad(want.square().sum(), list(model.parameters()))
    for forms, tol in ((("cpu_kernels",), 1e-5), (("export",), 1e-6), (("bf16_products",), 3e-2)):
        as_form(model, *forms)
        got = model(mix)
        got_grads = torch.autograd.grad(got.square().sum(), list(model.parameters()))
        scale = want.abs().max()
        assert (got - want).abs().max() <= tol * scale, forms
        g, w = torch.cat([g.flatten() for g in got_grads]), torch.cat([w.flatten() for w in grads])
        assert (g - w).norm() <= 10 * tol * w.norm(), forms  # bf16: the whole gradient's
    as_form(model, "bf16_products")
    with torch.no_grad():  # bf16 products are a training-step form: evaluation is fp32
        assert torch.equal(model(mix), want.detach())


def test_the_inference_form_is_a_view_that_folds_and_leaves_the_model_alone():
    model, mix = tiny(), torch.randn(2, 800)
    as_form(model, "cpu_kernels")
    view = as_form(model, *forms_of(model), "inference")
    assert view is not model and forms_of(model) == {"cpu_kernels"}
    assert type(view.separator).__name__ == "FusedTCN"
    with torch.no_grad():
        torch.testing.assert_close(view(mix), model(mix), atol=1e-5, rtol=1e-4)


def test_the_export_form_leaves_only_tensors_in_the_state_dict_and_undoes():
    model = ConditionedSeparator(tiny(), GE2E(), stack_channels=8, num_layers=2,
                                 layers_per_group=2, film_hidden=8)
    with_extra = [k for k in model.state_dict() if k.endswith("_extra_state")]
    assert with_extra  # Configurable models record how to rebuild them
    as_form(model, "export")
    assert not [k for k in model.state_dict() if k.endswith("_extra_state")]
    assert forms_of(model) == {"export"}
    as_form(model)
    assert [k for k in model.state_dict() if k.endswith("_extra_state")] == with_extra


def test_bf16_products_auto_only_where_bf16_is_native(monkeypatch):
    import spksep_modules.models.conv_tasnet as conv_tasnet
    from spksep_modules import SpkSepError

    for native in (True, False):
        monkeypatch.setattr(conv_tasnet, "native_bf16_cpu", lambda: native)
        model = tiny(bf16_products="auto")
        assert ("bf16_products" in forms_of(model)) == native
    with pytest.raises(SpkSepError, match="bf16_products: expected True, False or auto"):
        tiny(bf16_products="yes")


def test_native_bf16_honours_the_onednn_isa_limit(monkeypatch):
    from spksep_modules.nnet.precision import native_bf16_cpu

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN would emulate bf16
    assert native_bf16_cpu() is False
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx512_core")
    assert native_bf16_cpu() is False
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split()
    assert native_bf16_cpu() == ("avx512_bf16" in flags or "amx_bf16" in flags)
