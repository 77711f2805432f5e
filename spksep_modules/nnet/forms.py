"""Forms of a model: the same parameters and function, computed another way, chosen in one place.

A network is written once, in plain PyTorch layers. Where a faster or exportable way to
compute a layer exists, it is a *form* of that layer: a subclass with the same parameters,
buffers and state-dict keys that computes the same function (to float tolerance; bf16
products to bf16's), registered here under a form's name by the module that defines it.
:func:`as_form` is the one switch:

=================  =========================================================  ===============
form               what changes                                               defined in
=================  =========================================================  ===============
``cpu_kernels``    the TCN's PReLU+gLN and depthwise conv run hand-written    nnet.cpu_kernels
                   CPU kernels (less memory traffic; CPU tensors, no autocast)
``bf16_products``  the 1x1 convs multiply in bf16 in training steps (pays     nnet.cpu_kernels
                   with AMX or AVX512-BF16)
``export``         SpeechBrain's STFT and attentive pooling as trace-friendly  nnet.exportable
                   adapters, and no non-tensor extra state (what tracers and
                   exporters accept)
``inference``      every gLN folded into the conv after it, in place, when     models.fused
                   autograd is off (a *view* sharing the parameters: the model
                   itself is not changed)
=================  =========================================================  ===============

``as_form(model, *forms)`` switches the model's layers, in place, to exactly the in-place
forms named (every other one undone: ``as_form(model)`` gives the plain layers back) and
returns the model, or with ``"inference"`` its folded view. :func:`forms_of` says which
in-place forms a model's layers are in. Only exact classes are switched: a causal model's
per-frame layers (subclasses of the gLN layers) keep their own computation.

Example
-------
>>> from spksep_modules.models import ConvTasNet
>>> model = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1, cpu_kernels=False)
>>> sorted(forms_of(as_form(model, "cpu_kernels", "bf16_products")))
['bf16_products', 'cpu_kernels']
>>> sorted(forms_of(as_form(model))), type(model.separator.blocks[0].dconv).__name__
([], 'DepthwiseConv1d')
"""

from torch import nn

# form -> {plain class: (form class, applies(module) or None)}
_IN_PLACE = {}
# form -> function(model) -> view
_VIEWS = {}
# a form class -> the plain class it came from (to undo it)
_PLAIN = {}


def form_of(plain: type, form: str, applies=None):
    """Class decorator: register the decorated subclass of ``plain`` as ``plain``'s layer in
    form ``form`` (``applies(module)``: whether a given instance can take it, e.g. only 1x1
    convolutions). The subclass adds no parameters or state-dict entries; it may define
    ``_prepare(self)``, called after an instance is switched to it (buffers outside the
    state dict)."""

    def register(cls):
        _IN_PLACE.setdefault(form, {})[plain] = (cls, applies)
        _PLAIN[cls] = plain
        return cls

    return register


def view_form(form: str):
    """Function decorator: register ``function(model) -> view`` as form ``form``, a form
    that is a parameter-sharing view rather than an in-place switch."""

    def register(function):
        _VIEWS[form] = function
        return function

    return register


def known_forms() -> list:
    """The names :func:`as_form` accepts (those registered by the modules imported).

    Example
    -------
    >>> import spksep_modules.models  # registers every form of the package
    >>> known_forms()
    ['bf16_products', 'cpu_kernels', 'export', 'inference']
    """
    return sorted(set(_IN_PLACE) | set(_VIEWS) | {"export"})


def as_form(model: nn.Module, *forms: str) -> nn.Module:
    """Switch ``model``'s layers, in place, to exactly the in-place ``forms`` (the others
    undone) and return it, or its view in a view form (``"inference"``). See the module
    docstring.
    """
    unknown = [f for f in forms if f not in known_forms()]
    if unknown:
        raise ValueError(f"as_form: unknown form {unknown[0]!r}, expected some of "
                         f"{', '.join(known_forms())}")
    in_place = [f for f in forms if f in _IN_PLACE or f == "export"]
    for module in model.modules():
        plain = _PLAIN.get(type(module))
        if plain is not None:
            module.__class__ = plain
        for form in in_place:
            switch = _IN_PLACE.get(form, {}).get(type(module))
            if switch is not None and (switch[1] is None or switch[1](module)):
                module.__class__ = switch[0]
                getattr(module, "_prepare", lambda: None)()
        if "export" in in_place:
            _without_extra_state(module)
    views = [f for f in forms if f in _VIEWS]
    for form in views:
        model = _VIEWS[form](model)
    return model


def forms_of(model: nn.Module) -> set:
    """The in-place forms ``model``'s layers are in.

    Example
    -------
    >>> forms_of(nn.Sequential(nn.Conv1d(2, 2, 1)))
    set()
    """
    found = set()
    for module in model.modules():
        if type(module) in _PLAIN:
            plain = _PLAIN[type(module)]
            found.update(form for form, table in _IN_PLACE.items()
                         if table.get(plain, (None,))[0] is type(module))
            if form_without_extra_state(type(module)):
                found.add("export")
    return found


# The export form's other half: tracers and exporters want only tensors in a state dict, so
# a layer that records non-tensor extra state (``configurable.Configurable``: how to rebuild
# it) is switched to a subclass that records none. Made once per class, undone like any form.
_NO_EXTRA_STATE = {}


def _without_extra_state(module: nn.Module) -> None:
    cls = type(module)
    if getattr(cls, "get_extra_state", nn.Module.get_extra_state) is nn.Module.get_extra_state:
        return
    if cls not in _NO_EXTRA_STATE:
        variant = type(cls.__name__, (cls,), {"get_extra_state": nn.Module.get_extra_state,
                                              "__module__": cls.__module__})
        _NO_EXTRA_STATE[cls] = variant
        _PLAIN[variant] = cls
    module.__class__ = _NO_EXTRA_STATE[cls]


def form_without_extra_state(cls: type) -> bool:
    """Whether ``cls`` is the export form's no-extra-state variant of a class."""
    return cls in _NO_EXTRA_STATE.values()
