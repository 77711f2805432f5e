"""The separator contract every model family fits.

A separator is an ``nn.Module`` that

- takes ``mix [batch, time]`` (or ``[time]``) and returns a :class:`SeparatorOutput`:
  the estimates ``[batch, time, num_spks]`` as a tensor, plus named extras in
  ``.extras`` (e.g. the conditioned model's ``"intermediate"`` estimates);
- has ``num_spks``;
- records its constructor arguments (``self.config``) and saves them with its weights
  (``state_dict()["_extra_state"]``), so a checkpoint alone rebuilds it
  (:func:`load_separator`) and a basic model can be checked without its yaml;
- can serve as the conditioned model's basic model: it also exposes its filterbank as
  ``encoder`` (``nn.Conv1d(1, N, L, stride)``) and ``decoder`` (a transposed conv).

The Brain, the loss and the inference code only use this contract: they never ask which
family a separator is.
"""

import torch
from torch import nn

from spksep_modules import SpkSepError
from spksep_modules.configurable import Configurable, NotDescribable, build, spec


class SeparatorOutput(torch.Tensor):
    """The estimates ``[batch, time, num_spks]``, a tensor, with named ``extras``.

    Operations on it give plain tensors (it adds nothing to PyTorch's maths), so a
    separator's output can be used wherever its estimates are expected.

    Example
    -------
    >>> out = SeparatorOutput.of(torch.zeros(2, 100, 2), intermediate=torch.ones(2, 100, 2))
    >>> out.shape, type(out * 2).__name__, sorted(out.extras)
    (torch.Size([2, 100, 2]), 'Tensor', ['intermediate'])
    """

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def of(estimates: torch.Tensor, **extras) -> "SeparatorOutput":
        """Wraps ``estimates`` (no copy, autograd kept) with ``extras``."""
        out = estimates.as_subclass(SeparatorOutput)
        out.extras = {k: _plain(v) for k, v in extras.items()}
        return out

    @property
    def estimates(self) -> torch.Tensor:
        """The estimates as a plain tensor."""
        return self.as_subclass(torch.Tensor)


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_subclass(torch.Tensor) if isinstance(x, SeparatorOutput) else x


def as_batch(mix: torch.Tensor, model_name: str) -> torch.Tensor:
    """A separator's input as ``[batch, time]``: ``[time]`` gets a batch dimension, any
    other shape is an error naming ``model_name``.

    Example
    -------
    >>> as_batch(torch.zeros(100), "ConvTasNet").shape
    torch.Size([1, 100])
    """
    if mix.dim() == 1:
        mix = mix.unsqueeze(0)
    if mix.dim() != 2:
        raise SpkSepError(
            f"{model_name} input: expected [batch, time] or [time], got shape "
            f"{tuple(mix.shape)}"
        )
    return mix


class Separator(Configurable, nn.Module):
    """Base class of every separator (see the module docstring for the contract).

    Subclasses set ``self.num_spks`` and return ``SeparatorOutput.of(...)`` from forward.
    ``RUNTIME_ARGS`` names constructor arguments that change how, not what, the model
    computes (kernels, checkpointing): a checkpoint may be loaded with other values.

    Example
    -------
    >>> from spksep_modules.models import ConvTasNet
    >>> model = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1)
    >>> model.num_spks, model.config["N"], model.state_dict()["_extra_state"]["class"]
    (2, 16, 'spksep_modules.models.conv_tasnet.ConvTasNet')
    >>> ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1, mask_act="sigmoid").load_state_dict(
    ...     model.state_dict())
    Traceback (most recent call last):
        ...
    spksep_modules.SpkSepError: checkpoint was trained with mask_act=relu, the model here has mask_act=sigmoid: set mask_act=relu (or retrain)
    """

    RUNTIME_ARGS = ()

    # The spec travels in the state dict, so every SpeechBrain checkpoint of a separator
    # (and every basic model inside another) carries what rebuilds it.
    def get_extra_state(self):
        try:
            return spec(self)
        except NotDescribable:  # e.g. a speaker network built by another toolkit's yaml
            return None

    def set_extra_state(self, saved):
        if saved is None:
            return
        mine = self.get_extra_state()
        if mine is None:
            return
        if saved["class"] != mine["class"]:
            raise SpkSepError(
                f"checkpoint holds a {saved['class'].rsplit('.', 1)[-1]}, "
                f"not a {mine['class'].rsplit('.', 1)[-1]}: use the yaml it was trained with"
            )
        for key, want in mine["args"].items():
            have = saved["args"].get(key, want)
            if key in self.RUNTIME_ARGS or isinstance(want, dict) or isinstance(have, dict):
                continue  # nested models check themselves with their own extra state
            if have != want:
                raise SpkSepError(
                    f"checkpoint was trained with {key}={have}, the model here has "
                    f"{key}={want}: set {key}={have} (or retrain)"
                )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Runs saved before separators recorded their arguments have no "_extra_state".
        state_dict.setdefault(prefix + "_extra_state", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def separator_from_state(state: dict, where: str) -> Separator:
    """Rebuild a separator from a state dict that carries its spec (``_extra_state``).

    Example
    -------
    >>> from spksep_modules.models import ConvTasNet
    >>> model = ConvTasNet(N=16, L=8, B=8, H=16, P=3, X=2, R=1)
    >>> twin = separator_from_state(model.state_dict(), "example")
    >>> type(twin).__name__, twin.config["N"], torch.equal(twin(torch.ones(80)), model(torch.ones(80)))
    ('ConvTasNet', 16, True)
    """
    saved = state.get("_extra_state")
    if not saved:
        raise SpkSepError(
            f"{where}: checkpoint has no model description (written before spksep 0.2); "
            "rebuild it from its run's hyperparams.yaml, or retrain"
        )
    model = build(saved)
    model.load_state_dict(state)
    return model
