"""The ``spksep`` command: demo data, separation of users' files, paper tables, plots."""

import argparse
import os
import sys

from spksep_modules import SpkSepError, one_line
from spksep_modules.allocator import keep_freed_memory


def _demo_data(args):
    from spksep_modules.data.demo import make_demo_data

    root = make_demo_data(args.dir, seed=args.seed, num_spks=args.num_spks, noise=args.noise)
    print(f"demo data written to {root} (use it as --data_folder)")


def _separate(args):
    from spksep_modules.deploy.separate import resolve_precision, separate_files

    keep_freed_memory()  # chunks of one size: reuse their pages (see allocator.py)
    precision = resolve_precision(args.precision, args.device)
    print(f"separating in {precision}" + (" (auto)" if args.precision == "auto" else ""),
          file=sys.stderr)
    try:  # a folder that cannot hold any output stops everything, before any work
        os.makedirs(args.out, exist_ok=True)
    except OSError as err:
        raise SpkSepError(f"{args.out}: cannot create the folder ({err.strerror})") from None
    failed = []

    def on_error(path, message):  # one line per bad file; the others go on
        failed.append(path)
        print(f"error: {message}", file=sys.stderr, flush=True)

    chunking = {} if args.stream else dict(chunk_seconds=args.chunk_seconds,
                                           overlap_seconds=args.overlap_seconds)
    written = separate_files(
        args.files, args.model, args.out, device=args.device, precision=precision,
        on_error=on_error, progress=not args.no_progress, stream=args.stream,
        stream_chunk_ms=args.stream_chunk_ms, refresh_seconds=args.refresh_seconds,
        window_seconds=args.window_seconds, **chunking,
    )
    for path in written:
        print(path)
    if failed:
        print(f"error: {len(failed)} of {len(args.files)} files failed", file=sys.stderr)
        return 2
    return 0


def _export(args):
    from spksep_modules.deploy.export import export_run

    print(export_run(args.run, args.format, args.out, example_seconds=args.example_seconds))


def _kernels(args):
    from spksep_modules.nnet import native

    ready = native.tcn_kernels() is not None
    print(f"compiled TCN kernels for {native.capability()}: "
          + ("ready" if ready else "not available (the PyTorch kernels run instead)"))
    return 0 if ready else 1


def _package(args):
    from spksep_modules.deploy.package import package_run

    print(package_run(args.run, args.out))


def _table(args):
    from spksep_modules.reports.tables import report, write_records

    text, data = report(args.runs, significance=not args.no_significance,
                        baseline=args.baseline, metric=args.metric,
                        resamples=args.resamples, seed=args.seed)
    print(text)
    write_records(data, args.csv, args.json)


def _plot(args):
    from spksep_modules.reports.plots import plot_runs

    written = plot_runs(args.runs, args.out, plots=args.plots, baseline=args.baseline,
                        mixture=args.mixture, device=args.device)
    for path in written:
        print(path)


def build_parser():
    """The ``spksep`` command line: one subcommand each for ``demo-data``, ``separate``,
    ``table`` and ``plot``; every subcommand's ``func`` runs it.

    Example
    -------
    >>> args = build_parser().parse_args(
    ...     ["separate", "talk.wav", "--model", "runs/convtasnet", "--out", "separated"])
    >>> args.command, args.files, args.model, args.precision, args.chunk_seconds
    ('separate', ['talk.wav'], 'runs/convtasnet', 'auto', 30.0)
    >>> args = build_parser().parse_args(["separate", "talk.wav", "--model", "runs/causal",
    ...                                   "--out", "separated", "--stream"])
    >>> args.stream, args.stream_chunk_ms, args.refresh_seconds, args.window_seconds
    (True, 10.0, 1.0, 3.0)
    >>> args = build_parser().parse_args(["table", "runs/a", "runs/b", "--csv", "t.csv"])
    >>> args.metric, args.resamples, args.seed, args.csv, args.baseline
    ('si_snr_i', 10000, 0, 't.csv', None)
    """
    parser = argparse.ArgumentParser(prog="spksep", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo-data", help="write the synthetic Libri2Mix-layout demo set")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_spks", type=int, default=2, choices=(2, 3))
    p.add_argument("--noise", action="store_true",
                   help="also write mix_both, mix_single and noise/ (mixture_type: mix_both)")
    p.set_defaults(func=_demo_data)

    p = sub.add_parser("separate", help="separate recordings with a trained run")
    p.add_argument("files", nargs="+", help="audio files (any rate, mono or multichannel)")
    p.add_argument("--model", required=True, help="a run folder written by train.py, a "
                                                 "package (spksep package), a SpeechBrain "
                                                 "separator folder or the output folder of a "
                                                 "SpeechBrain separation recipe")
    p.add_argument("--out", required=True, help="folder for <name>_s1.wav, <name>_s2.wav, ...")
    p.add_argument("--device", default="cpu")
    p.add_argument("--chunk_seconds", type=float, default=30.0)
    p.add_argument("--overlap_seconds", type=float, default=2.0)
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto (default): bf16 on CPUs with native bf16 (AVX512-BF16, AMX), "
                        "~1.5x faster, outputs within ~40 dB SNR of fp32; fp32 elsewhere")
    p.add_argument("--stream", action="store_true",
                   help="run a causal model chunk by chunk, as live audio (a conditioned "
                        "model embeds its speakers from audio already seen: see "
                        "--refresh_seconds, --window_seconds)")
    p.add_argument("--stream_chunk_ms", type=float, default=10.0,
                   help="with --stream: chunk length in ms at the model's rate (default 10)")
    p.add_argument("--refresh_seconds", type=float, default=1.0,
                   help="with --stream, conditioned model: recompute the speaker embeddings "
                        "every this many seconds (the output is the basic model's until the "
                        "first refresh; default 1)")
    p.add_argument("--window_seconds", type=float, default=3.0,
                   help="with --stream, conditioned model: embed the last this many seconds "
                        "of each estimate (default 3)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_separate)

    p = sub.add_parser("export", help="write a trained model as ONNX or TorchScript")
    p.add_argument("run", help="a run folder, a package or a SpeechBrain separator folder")
    p.add_argument("--format", required=True, choices=("onnx", "torchscript"))
    p.add_argument("--out", required=True, help="the file to write")
    p.add_argument("--example_seconds", type=float, default=1.0,
                   help="length of the example input the graph is traced on")
    p.set_defaults(func=_export)

    p = sub.add_parser("package", help="write a self-contained model folder")
    p.add_argument("run", help="a run folder, a package or a SpeechBrain separator folder")
    p.add_argument("--out", required=True, help="the folder to write")
    p.set_defaults(func=_package)

    p = sub.add_parser("table", help="Table I / II in Markdown from finished runs, with the "
                                     "paired gains of every model over the baseline")
    p.add_argument("runs", nargs="+", help="run folders holding test_summary.json and "
                                           "test_results.csv (or 'runs/x_seed*' patterns); "
                                           "runs of the same model are its seeds, averaged, "
                                           "with intervals over seeds too; NAME=RUN,RUN names "
                                           "a group of runs. With a conditioning and a "
                                           "convtasnet_continued run, the conditioned model is "
                                           "also paired with the continued baseline")
    p.add_argument("--baseline", help="the run (or NAME) the others are paired with "
                                      "(default: the convtasnet runs among RUNS)")
    p.add_argument("--metric", default="si_snr_i",
                   choices=("si_snr_i", "si_snr", "sdr_i", "sdr", "stoi", "pesq"),
                   help="per-mixture column compared (default si_snr_i)")
    p.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--no_significance", action="store_true",
                   help="only Table I / II (no test_results.csv needed)")
    p.add_argument("--csv", help="also write one row per run (means and gains) to this CSV")
    p.add_argument("--json", help="also write the same records and settings to this JSON")
    p.set_defaults(func=_table)

    p = sub.add_parser("plot", help="learning curves, SI-SNRi distributions and spectrograms "
                                    "of finished runs, as PNGs")
    p.add_argument("runs", nargs="+", help="run folders written by train.py")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.add_argument("--baseline", help="the run the others are paired with (default: the "
                                      "convtasnet run among RUNS)")
    p.add_argument("--mixture", help="test mixture ID for the spectrograms (default: the "
                                     "median one by SI-SNRi)")
    p.add_argument("--device", default="cpu", help="where the runs' models separate it")
    p.add_argument("--plots", nargs="+", default=["curves", "distributions", "spectrograms"],
                   choices=("curves", "distributions", "spectrograms"),
                   help="which figures (default: all); 'curves' alone needs only train_log.txt, "
                        "so it works on runs still training")
    p.set_defaults(func=_plot)

    p = sub.add_parser("kernels", help="build the compiled CPU kernels for this machine now "
                                       "(training builds them on first use otherwise)")
    p.set_defaults(func=_kernels)
    return parser


def main(argv=None):
    """Run ``spksep`` on ``argv`` (default: ``sys.argv[1:]``); returns the exit status:
    0, 1 when some files of ``separate`` failed (each got its ``error:`` line, the others were written),
    or 2 with one ``error:`` line on stderr for a user's mistake (``SpkSepError``). A
    malformed command line exits (``SystemExit``) with argparse's usage message, status 2.

    Example
    -------
    >>> import contextlib
    >>> with contextlib.redirect_stderr(sys.stdout):  # show the line printed on stderr
    ...     main(["table", "no/such/run"])
    error: no/such/run/test_summary.json: missing (evaluate the run first: train.py ... --test_only)
    2
    """
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except SpkSepError as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    return status or 0


if __name__ == "__main__":
    sys.exit(main())
