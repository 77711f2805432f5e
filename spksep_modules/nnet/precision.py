"""Where reduced precision would lose what matters: sums kept in fp32."""

import torch


def widen(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least fp32 (statistics are summed there whatever the activations' type).

    Example
    -------
    >>> widen(torch.ones(2, dtype=torch.bfloat16)).dtype, widen(torch.ones(2).double()).dtype
    (torch.float32, torch.float64)
    """
    return x.to(torch.promote_types(x.dtype, torch.float32))


def widen_under_autocast(x: torch.Tensor) -> torch.Tensor:
    """A residual or skip sum's type: fp32 when autocast narrows the activations (40 sums
    in bf16's 8-bit mantissa would lose what later blocks add); else the model's own.

    Example
    -------
    >>> x = torch.ones(2, dtype=torch.bfloat16)
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     widen_under_autocast(x).dtype
    torch.float32
    >>> widen_under_autocast(x).dtype
    torch.bfloat16
    """
    return widen(x) if torch.is_autocast_enabled(x.device.type) else x
