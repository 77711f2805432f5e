"""Modules that know the arguments they were built with, and can be rebuilt from them.

A class that inherits :class:`Configurable` records its constructor arguments in
``self.config`` (defaults filled in) once its ``__init__`` has run. ``spec(module)`` turns
that into plain data, ``{"class": "package.module.Name", "args": {...}}``, where an
argument that is itself a Configurable module becomes its own spec; ``build(spec)``
inverts it (with fresh weights: the state dict brings the trained ones). Separators save
their spec with their weights (see ``spksep_modules.models.base``), so a run folder can be
rebuilt, and a basic model checked, from its checkpoint alone.

Example
-------
>>> class Gain(Configurable, torch.nn.Module):
...     def __init__(self, channels, init=1.0):
...         super().__init__()
...         self.gain = torch.nn.Parameter(torch.full((channels,), init))
>>> spec(Gain(4))
{'class': 'spksep_modules.configurable.Gain', 'args': {'channels': 4, 'init': 1.0}}
"""

import functools
import importlib
import inspect

import torch

from spksep_modules import SpkSepError


class Configurable:
    """Mixin: ``self.config`` holds the constructor's arguments (see the module docstring).

    Example
    -------
    >>> class Gain(Configurable, torch.nn.Module):
    ...     def __init__(self, channels, init=1.0):
    ...         super().__init__()
    >>> Gain(4).config  # defaults filled in
    {'channels': 4, 'init': 1.0}
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" not in cls.__dict__:
            return
        init = cls.__init__

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            init(self, *args, **kw)
            if type(self).__init__ is recording_init:  # the outermost class records
                bound = inspect.signature(init).bind(self, *args, **kw)
                bound.apply_defaults()
                arguments = dict(list(bound.arguments.items())[1:])
                extra = arguments.pop("kwargs", None) if "kwargs" in arguments else None
                self.config = {**arguments, **(extra or {})}

        cls.__init__ = recording_init


class NotDescribable(SpkSepError):
    """A module without recorded constructor arguments inside what should be described.

    Example
    -------
    >>> spec(torch.nn.Linear(2, 2))
    Traceback (most recent call last):
        ...
    spksep_modules.configurable.NotDescribable: Linear does not record its constructor arguments
    >>> issubclass(NotDescribable, SpkSepError)
    True
    """


def _describe(value):
    if isinstance(value, torch.nn.Module):
        return spec(value)
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if isinstance(value, dict):
        return {k: _describe(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise NotDescribable(f"{type(value).__name__} argument cannot be saved as plain data")


def spec(module) -> dict:
    """``{"class": dotted name, "args": plain-data constructor arguments}`` of ``module``.

    Example
    -------
    >>> from spksep_modules.models import ConvTasNet
    >>> description = spec(ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1))
    >>> description["class"], description["args"]["N"], description["args"]["mask_act"]
    ('spksep_modules.models.conv_tasnet.ConvTasNet', 16, 'relu')
    """
    if not isinstance(module, Configurable):
        raise NotDescribable(
            f"{type(module).__name__} does not record its constructor arguments"
        )
    cls = type(module)
    return {"class": f"{cls.__module__}.{cls.__qualname__}",
            "args": {k: _describe(v) for k, v in module.config.items()}}


def _is_spec(value) -> bool:
    return isinstance(value, dict) and set(value) == {"class", "args"}


def build(description: dict):
    """The module a :func:`spec` describes (fresh weights).

    Example
    -------
    >>> from spksep_modules.models import ConvTasNet
    >>> model = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1)
    >>> twin = build(spec(model))
    >>> type(twin).__name__, twin.config == model.config, twin is model
    ('ConvTasNet', True, False)
    >>> build({"class": "nowhere.Model", "args": {}})
    Traceback (most recent call last):
        ...
    spksep_modules.SpkSepError: unknown model class 'nowhere.Model'
    """
    module_name, _, name = description["class"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        raise SpkSepError(f"unknown model class {description['class']!r}") from None

    def rebuild(value):
        if _is_spec(value):
            return build(value)
        if isinstance(value, list):
            return [rebuild(v) for v in value]
        return value

    # Arguments added after a description was written take the value that reproduces the
    # module it described (the class's ``absent_args``), not today's default.
    args = {**getattr(cls, "absent_args", {}), **description["args"]}
    return cls(**{k: rebuild(v) for k, v in args.items()})
