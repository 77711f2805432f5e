"""``make bench``: speed and memory, ours against SpeechBrain's own models, in one run.

1. Conv-TasNet training step at the paper's sizes (batch 4 x 3 s, 16 kHz): ours against
   SpeechBrain's MaskNet + Encoder/Decoder; time ratio and peak memory.
2. Perceptual loss: its cost against what the frozen representation network alone needs,
   and its overhead over a baseline step (wav2vec 1.0 large, GE2E).
3. Inference real-time factor: SpeechBrain's Conv-TasNet, ours, the speaker-conditioned
   pipeline with RawNet2 and with GE2E.
4. SepFormer training step at SpeechBrain's Libri2Mix recipe sizes (batch 1 x 2 s, 8 kHz):
   ours against SpeechBrain's recipe model (same modules, weights and mixtures); the time
   ratio is what our loop around SpeechBrain's mask network costs.
5. Streaming: algorithmic latency and real-time factor per 10 ms chunk, one thread, of the
   causal Conv-TasNet at the paper's sizes and of the conditioned pipeline (GE2E, RawNet2)
   on top of it (``bench_streaming.py``).
6. Training at scale: what ``--precision=bf16`` and ``compile: True`` (with and without the
   CPU kernels) do to a Conv-TasNet training step at the paper's sizes, one thread, CPU
   time of interleaved steps (``bench_training_scale.py``); what dynamic mixing costs per
   batch against the static set (``bench_dynamic_mixing.py``).
7. Time to quality: SI-SNRi after 5, 10 and 20 CPU-minutes of training, ours (with and
   without its schedule and dynamic mixing) against SpeechBrain's Conv-TasNet, on the demo
   set (``bench_time_to_quality.py``; the longest part, ~40 minutes on 2 cores; findings
   in ``bench/NOTES.md``); ``--data /path/to/Libri2Mix`` (``make bench DATA=...``) runs it on
   that folder instead, such as the real-speech set of ``make_real_dev.py``.

Each part runs in its own process so that peak memory is measured per model. Ratios are
what to read: absolute times depend on the machine and on what else it runs.

Users' CPUs differ: most stop at AVX2, where oneDNN and ATen take other kernels than on a
CPU with AVX-512 or AMX. So every part runs twice, under the machine's full instruction set
and limited to AVX2 at start-up (``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``), and
each section starts with the CPU model and the flags that decide the kernels.
``--isa full`` or ``--isa avx2`` runs one of them; ``--parts`` a few parts.
"""

import argparse
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PARTS = ["bench_forms.py", "bench_convtasnet.py", "bench_perceptual.py", "bench_rtf.py", "bench_sepformer.py",
         "bench_streaming.py", "bench_training_scale.py", "bench_dynamic_mixing.py",
         "bench_time_to_quality.py"]
ISA_LIMITS = {"full": {}, "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}}
# The CPU flags that change which kernels oneDNN and ATen run.
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                "amx_tile", "amx_bf16", "amx_int8")


def cpu_description() -> str:
    """'<model>; flags: avx2 avx512f ...' from /proc/cpuinfo (the platform's name elsewhere).

    Example
    -------
    >>> cpu_description().count("flags:") == 1
    True
    """
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    return f"{model}; flags: {' '.join(f for f in KERNEL_FLAGS if f in flags) or 'none of ' + ', '.join(KERNEL_FLAGS)}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--isa", nargs="+", choices=list(ISA_LIMITS), default=list(ISA_LIMITS))
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=PARTS)
    parser.add_argument("--data", default=None,
                        help="a LibriMix-layout folder for the time-to-quality part (default: the demo set)")
    args = parser.parse_args(argv)
    for isa in args.isa:
        env = dict(os.environ, **ISA_LIMITS[isa])
        print(f"\n# Instruction set: {isa} {ISA_LIMITS[isa] or ''}\n# CPU: {cpu_description()}",
              flush=True)
        for part in args.parts:  # each script has its own options: run it alone with --help
            print(f"\n## {part} ({isa})\n", flush=True)
            options = part_options(part, args, isa)
            subprocess.run([sys.executable, os.path.join(HERE, part), *options], check=True, env=env)


def part_options(part, args, isa):
    """What ``make bench`` passes to one part: ``--data`` to the time-to-quality part, with
    an output folder per instruction set and data (so the two sets' results stay apart).

    Example
    -------
    >>> args = argparse.Namespace(data="/d/Libri2Mix")
    >>> part_options("bench_time_to_quality.py", args, "avx2")[:2]
    ['--data', '/d/Libri2Mix']
    >>> part_options("bench_rtf.py", args, "avx2")
    []
    """
    if part != "bench_time_to_quality.py":
        return []
    name = "demo" if args.data is None else os.path.basename(os.path.normpath(args.data))
    out = os.path.join(HERE, "out", f"time_to_quality-{name}-{isa}")
    return ([] if args.data is None else ["--data", args.data]) + ["--out", out]


if __name__ == "__main__":
    main()
