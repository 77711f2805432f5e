"""Streaming: algorithmic latency and compute per chunk (RTF, one thread) of the causal
Conv-TasNet at the paper's sizes (N=512, L=16, B=128, H=512, P=3, X=8, R=3).

RTF = compute time per chunk / chunk duration (<= 1 keeps up with the input; the issue's
target is <= 0.5 for 10 ms chunks). Algorithmic latency = chunk + L - 1 samples (see
``spksep_modules.deploy.streaming``). Weights are random: speed does not depend on them.

Then the same for the speaker-conditioned pipeline streamed
(``spksep_modules.deploy.streaming_conditioned``): that causal Conv-TasNet as basic model, a
speaker network (GE2E or RawNet2 at the authors' sizes, random weights) and the 40-layer,
64-channel FiLM'd stack with the estimate cue and residual corrections, embeddings
refreshed every ``--refresh_seconds`` from the last ``--window_seconds``. Its latency is
one hop more (the cue). The chunks that refresh the embeddings are the expensive ones:
the worst chunk is reported beside the mean and p95. The stream runs once over 1.5 s
before the timed run, so that first-call costs are not counted.
"""

import argparse
import statistics
import time

import torch

from spksep_modules.deploy.streaming import StreamingSeparator
from spksep_modules.deploy.streaming_conditioned import StreamingConditionedSeparator
from spksep_modules.models import ConditionedSeparator, ConvTasNet
from spksep_modules.nnet.frozen import Frozen


def measure(rate, chunk_ms, seconds, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ConvTasNet(causal=True).eval()  # the paper's sizes
    stream = StreamingSeparator(model)
    chunk = int(rate * chunk_ms / 1000)
    mix = torch.randn(int(rate * seconds)) * 0.1
    times = []
    for i, piece in enumerate(mix.split(chunk)):
        start = time.perf_counter()
        stream.push(piece)
        if i >= 10:  # warm-up chunks not counted
            times.append(time.perf_counter() - start)
    stream.flush()
    per_chunk = statistics.mean(times)
    p95 = sorted(times)[int(0.95 * len(times))]
    latency_ms = stream.latency_samples(chunk) / rate * 1000
    print(f"| {rate} | {chunk_ms:g} | {latency_ms:.2f} | {per_chunk * 1000:.2f} | "
          f"{per_chunk / (chunk / rate):.3f} | {p95 / (chunk / rate):.3f} |", flush=True)


def conditioned_pipeline(rate, speaker):
    """The causal conditioned pipeline at the paper's sizes, random weights."""
    from spksep_modules.speakers.ge2e import GE2E
    from spksep_modules.speakers.rawnet2 import RawNet2

    torch.manual_seed(0)
    basic = ConvTasNet(causal=True).eval()
    net = {"ge2e": GE2E, "rawnet2": RawNet2}[speaker]()
    return ConditionedSeparator(basic, Frozen(net, net.sample_rate, rate), causal=True,
                                residual=True).eval()


def measure_conditioned(rate, chunk_ms, seconds, threads, speaker, refresh, window):
    torch.set_num_threads(threads)
    stream = StreamingConditionedSeparator(conditioned_pipeline(rate, speaker), rate,
                                           refresh_seconds=refresh, window_seconds=window)
    chunk = int(rate * chunk_ms / 1000)
    stream.separate_signal(torch.randn(int(rate * 1.5)) * 0.1, chunk)  # warm-up
    mix = torch.randn(int(rate * seconds)) * 0.1
    times = []
    for piece in mix.split(chunk):
        start = time.perf_counter()
        stream.push(piece)
        times.append(time.perf_counter() - start)
    stream.flush()
    duration = chunk / rate
    per_chunk, worst = statistics.mean(times), max(times)
    p95 = sorted(times)[int(0.95 * len(times))]
    latency_ms = stream.latency_samples(chunk) / rate * 1000
    print(f"| {rate} | {chunk_ms:g} | {speaker} | {latency_ms:.2f} | {per_chunk * 1000:.2f} | "
          f"{per_chunk / duration:.3f} | {p95 / duration:.3f} | {worst * 1000:.1f} "
          f"({worst / duration:.1f}) |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", type=int, nargs="+", default=[8000, 16000])
    parser.add_argument("--chunk_ms", type=float, nargs="+", default=[10.0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--speaker_nets", nargs="*", default=["ge2e", "rawnet2"],
                        choices=("ge2e", "rawnet2"),
                        help="conditioned pipelines to measure (none: Conv-TasNet only)")
    parser.add_argument("--refresh_seconds", type=float, default=1.0)
    parser.add_argument("--window_seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(f"causal Conv-TasNet, paper sizes, {args.threads} thread(s), "
          f"{args.seconds:g} s of audio")
    print("| rate (Hz) | chunk (ms) | algorithmic latency (ms) | compute per chunk (ms) "
          "| RTF (mean) | RTF (p95) |")
    print("|---|---|---|---|---|---|")
    for rate in args.rates:
        for chunk_ms in args.chunk_ms:
            measure(rate, chunk_ms, args.seconds, args.threads)
    if not args.speaker_nets:
        return
    print(f"\nconditioned pipeline, streamed: causal Conv-TasNet (paper sizes) + speaker net "
          f"+ 40-layer stack, embeddings every {args.refresh_seconds:g} s from the last "
          f"{args.window_seconds:g} s, {args.threads} thread(s), {args.seconds:g} s of audio")
    print("| rate (Hz) | chunk (ms) | speaker net | algorithmic latency (ms) "
          "| compute per chunk (ms) | RTF (mean) | RTF (p95) | worst chunk, ms (RTF) |")
    print("|---|---|---|---|---|---|---|---|")
    for rate in args.rates:
        for chunk_ms in args.chunk_ms:
            for speaker in args.speaker_nets:
                measure_conditioned(rate, chunk_ms, args.seconds, args.threads, speaker,
                                    args.refresh_seconds, args.window_seconds)


if __name__ == "__main__":
    main()
