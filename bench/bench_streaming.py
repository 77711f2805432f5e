"""Streaming: algorithmic latency and compute per chunk (RTF, one thread) of the causal
Conv-TasNet at the paper's sizes (N=512, L=16, B=128, H=512, P=3, X=8, R=3).

RTF = compute time per chunk / chunk duration (<= 1 keeps up with the input; the issue's
target is <= 0.5 for 10 ms chunks). Algorithmic latency = chunk + L - 1 samples (see
``spksep_modules.streaming``). Weights are random: speed does not depend on them.
The conditioned pipeline does not stream yet, so it is not measured here.
"""

import argparse
import statistics
import time

import torch

from spksep_modules.models import ConvTasNet
from spksep_modules.streaming import StreamingSeparator


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


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", type=int, nargs="+", default=[8000, 16000])
    parser.add_argument("--chunk_ms", type=float, nargs="+", default=[10.0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(f"causal Conv-TasNet, paper sizes, {args.threads} thread(s), "
          f"{args.seconds:g} s of audio")
    print("| rate (Hz) | chunk (ms) | algorithmic latency (ms) | compute per chunk (ms) "
          "| RTF (mean) | RTF (p95) |")
    print("|---|---|---|---|---|---|")
    for rate in args.rates:
        for chunk_ms in args.chunk_ms:
            measure(rate, chunk_ms, args.seconds, args.threads)


if __name__ == "__main__":
    main()
