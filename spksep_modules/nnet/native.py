"""Compiled CPU kernels for the TCN layers, built on this machine on first use.

``csrc/tcn_kernels.cpp`` fuses PReLU + gLN and the dilated depthwise conv (forward and
backward) into loops over one channel row at a time, so each activation is read once or
twice and written once, where the PyTorch spelling of the same maths
(``nnet.cpu_kernels``) makes 6-20 passes. On the small Conv-TasNet the two layers'
forward and backward take ~0.4x the time (``bench/bench_forms.py``).

The kernels are compiled with PyTorch's C++ extension builder (a C++ compiler and ninja;
about a minute, once per machine and instruction set: the build is cached in
``~/.cache/torch_extensions/<python and CUDA tag>/<name>``, or under
``$TORCH_EXTENSIONS_DIR``). ``spksep kernels`` builds them ahead, so the first training run
does not wait.
They are built for the instruction set PyTorch's own CPU kernels use
(``torch.backends.cpu.get_cpu_capability()``, which honours ``ATEN_CPU_CAPABILITY``), so
a run limited to AVX2 measures what an AVX2-only CPU would run.

Where they cannot be built (no compiler, no ninja, a build folder that cannot be written, a
failed build) :func:`tcn_kernels` returns None, says why once, and the layers run
``nnet.cpu_kernels``' PyTorch spelling: slower, the same results. ``SPKSEP_NATIVE_KERNELS=0`` turns them off. A failed build is remembered (a
marker file beside the build) so that later processes do not try again; delete it, or
set ``SPKSEP_NATIVE_KERNELS=1``, to retry.
"""

import contextlib
import functools
import hashlib
import logging
import os
import platform
import shutil
import sys
import warnings

import torch

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc", "tcn_kernels.cpp")

# Per instruction-set level: the compiler flags that let the loops vectorise for it.
ISA_FLAGS = {
    "AVX512": ["-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"],
    "AVX2": ["-mavx2", "-mfma"],
}
# -fno-trapping-math lets a select (PReLU's slope) vectorise; -fopenmp-simd honours the
# kernels' `omp simd` reductions without linking OpenMP.
BASE_FLAGS = ["-O3", "-fopenmp-simd", "-fno-trapping-math"]

_loaded = {}  # capability -> module or None, per process


@functools.lru_cache(maxsize=None)
def capability() -> str:
    """The instruction-set level the kernels are built for: PyTorch's CPU capability
    (``AVX512``, ``AVX2``, ... ; ``ATEN_CPU_CAPABILITY`` lowers it), or ``DEFAULT`` off
    x86-64.

    Example
    -------
    >>> capability() in ("AVX512", "AVX2", "DEFAULT", "ZVECTOR", "VSX", "SVE256")
    True
    """
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return "DEFAULT"
    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return "DEFAULT"


def build_flags(level: str) -> list:
    """Compiler flags for ``level`` (see :data:`ISA_FLAGS`).

    Example
    -------
    >>> build_flags("AVX2")
    ['-O3', '-fopenmp-simd', '-fno-trapping-math', '-mavx2', '-mfma']
    >>> build_flags("DEFAULT")
    ['-O3', '-fopenmp-simd', '-fno-trapping-math']
    """
    return BASE_FLAGS + ISA_FLAGS.get(level, [])


def _build_name(level: str) -> str:
    """One extension per instruction set and source version (a changed source builds anew)."""
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha1(f.read()).hexdigest()[:10]
    return f"spksep_tcn_{level.lower()}_{digest}"


def _cpp_extension():
    """``torch.utils.cpp_extension``, imported without its CUDA_HOME warning (CPU code only)."""
    logger = logging.getLogger("torch.utils.cpp_extension")
    level, logger.level = logger.level, logging.ERROR
    try:
        import torch.utils.cpp_extension as cpp
    finally:
        logger.setLevel(level)
    return cpp


def _marker(name: str) -> str:
    _get_build_directory = _cpp_extension()._get_build_directory

    return os.path.join(_get_build_directory(name, verbose=False), "BUILD_FAILED")


def _compiler_error(error: Exception) -> str:
    """The lines of a build failure that say what went wrong: PyTorch's message starts with
    ninja's output, whose first line is the (long) compiler command.

    Example
    -------
    >>> _compiler_error(RuntimeError("Error building extension 'x': [1/2] c++ -O3 ... -c a.cpp\\n"
    ...                              "a.cpp:3:1: error: expected ';' before '}' token\\nninja: build stopped"))
    "a.cpp:3:1: error: expected ';' before '}' token"
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower() and not line.startswith("Error building")]
    text = " | ".join(errors[:3]) if errors else " ".join(" ".join(lines).split())[-300:]
    return text[:500]


def _why_not() -> str:
    """Why the kernels cannot be built here, or "" if they can be tried."""
    setting = os.environ.get("SPKSEP_NATIVE_KERNELS", "").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return "SPKSEP_NATIVE_KERNELS=0"
    if os.name != "posix":
        return f"not built on {platform.system()} (GCC or Clang flags)"
    if not any(shutil.which(c) for c in (os.environ.get("CXX", "c++"), "c++", "g++", "clang++")):
        return "no C++ compiler found (install g++ or clang)"
    return ""


def _with_venv_ninja():
    """PyTorch looks for ``ninja`` on PATH; the pip package installs it beside this Python."""
    here = os.path.dirname(sys.executable)
    if os.path.exists(os.path.join(here, "ninja")) and here not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = here + os.pathsep + os.environ.get("PATH", "")


def tcn_kernels():
    """The compiled kernels' module, built (or loaded from the cache) on first call; None
    where they are off or cannot be built (said once per process, as a warning).

    Example
    -------
    >>> mod = tcn_kernels()
    >>> mod is None or hasattr(mod, "prelu_gln_forward")
    True
    """
    level = capability()
    if level in _loaded:
        return _loaded[level]
    _loaded[level] = None
    why = _why_not()
    if why:
        if not why.startswith("SPKSEP_NATIVE_KERNELS"):
            warnings.warn(f"spksep: compiled TCN kernels off ({why}); the PyTorch kernels run instead",
                          stacklevel=2)
        return None
    _with_venv_ninja()
    if not _cpp_extension().is_ninja_available():  # not remembered: installing it is the fix
        warnings.warn("spksep: compiled TCN kernels off (ninja not found: pip install ninja); "
                      "the PyTorch kernels run instead", stacklevel=2)
        return None
    try:
        name = _build_name(level)
        marker = _marker(name)  # creates the build folder: fails where it cannot be written
    except OSError as error:
        warnings.warn(f"spksep: compiled TCN kernels off (no build folder: {error}; set "
                      "TORCH_EXTENSIONS_DIR to a writable folder); the PyTorch kernels run instead",
                      stacklevel=2)
        return None
    retry = os.environ.get("SPKSEP_NATIVE_KERNELS", "").strip() == "1"
    if os.path.exists(marker) and not retry:
        warnings.warn(f"spksep: compiled TCN kernels off (their build failed before: {marker}; "
                      "delete it or set SPKSEP_NATIVE_KERNELS=1 to retry)", stacklevel=2)
        return None
    try:
        module = _cpp_extension().load(name=name, sources=[SOURCE], extra_cflags=build_flags(level),
                                       verbose=False)
    except Exception as error:  # noqa: BLE001 - any build failure leaves the PyTorch kernels
        with contextlib.suppress(OSError):  # the whole output, for whoever reads the marker
            with open(marker, "w") as f:
                f.write(str(error) + "\n")
        warnings.warn(f"spksep: compiled TCN kernels could not be built ({_compiler_error(error)}; "
                      f"the whole output: {marker}); the PyTorch kernels run instead", stacklevel=2)
        return None
    with contextlib.suppress(OSError):  # a retry that built: later processes need not skip it
        os.remove(marker)
    _loaded[level] = module
    return module


@contextlib.contextmanager
def disabled():
    """Within the block, this process runs the PyTorch kernels (benchmarks compare the two).

    Example
    -------
    >>> with disabled():
    ...     tcn_kernels() is None
    True
    """
    level = capability()
    kept = tcn_kernels()
    _loaded[level] = None
    try:
        yield
    finally:
        _loaded[level] = kept


def usable(x: torch.Tensor) -> bool:
    """Whether the compiled kernels serve ``x``: a contiguous, non-empty ``[batch, C,
    frames]`` float32 CPU tensor, and the kernels available (anything else runs the
    PyTorch kernels)."""
    return (x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous()
            and x.dim() == 3 and x.numel() > 0 and tcn_kernels() is not None)

