"""Where reduced precision would lose what matters: sums kept in fp32."""

import os

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


# oneDNN's ISA levels below AVX512_CORE_BF16: limited to one of them (ONEDNN_MAX_CPU_ISA),
# oneDNN emulates bf16 products even on a CPU that has them.
_NO_BF16_ISAS = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE",
                 "AVX512_CORE_VNNI"}


def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 dot products natively (AVX512-BF16 or AMX) and oneDNN
    may use them (``ONEDNN_MAX_CPU_ISA`` not limited below ``AVX512_CORE_BF16``).

    Without them oneDNN emulates bf16 and it is slower than fp32, not faster (3.7x the
    plain training step for ``bf16_products`` under AVX2 limits: ``bench/bench_forms.py``).

    Example
    -------
    >>> isinstance(native_bf16_cpu(), bool)  # True or False depending on this machine's CPU
    True
    """
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _NO_BF16_ISAS:
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:  # not Linux: do not guess
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
