"""Run the real entry points (``train.py`` of both recipes, ``spksep``) many times, cheaply.

Starting ``python train.py`` costs 3-5 s of imports; a matrix of dozens of rows cannot
pay that each time. :class:`EntryPoints` starts one *zygote* process that imports torch,
SpeechBrain and spksep once and then, per request, forks a child that runs the entry point
exactly as the command line would: ``train.py`` through ``runpy`` as ``__main__`` (so
``spksep_modules.training.recipe.run(main)`` handles errors: ``error: ...`` on stderr, exit status
2), ``spksep`` through ``sys.exit(spksep_modules.cli.main(argv))``; an uncaught exception
goes through ``sys.excepthook`` and exits with status 1, as in a fresh interpreter. The
child's stdout and stderr (file descriptors 1 and 2) are captured, and its exit status or
killing signal is returned.

Faults are injected in the child only (see ``INJECTIONS``): a full disk while a checkpoint
is written, ``kill -9`` at a chosen or random point, NaN losses, a folder that cannot be
written, RSS probes. The parent test process never imports torch for this.

Run as ``python tests/entrypoints.py``: the zygote, reading one JSON request per line on
stdin and answering one JSON line on stdout.
"""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


class EntryPoints:
    """The test side: ``train(...)`` and ``spksep(...)`` return a :class:`Result`."""

    def __init__(self, env=None):
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__)], cwd=ROOT, env=self.env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        ready = self.proc.stdout.readline()
        if ready.strip() != "ready":
            raise RuntimeError(f"entry-point zygote did not start: {ready!r}")

    def _request(self, **request):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("entry-point zygote died")
        return Result(**json.loads(line))

    def train(self, script_dir, args, inject=(), env=None, timeout=300):
        """``cd script_dir && python train.py ARGS`` in a forked child."""
        return self._request(kind="train", cwd=str(script_dir), args=[str(a) for a in args],
                             inject=[list(i) for i in inject], env=env or {}, timeout=timeout)

    def spksep(self, args, inject=(), env=None, timeout=300):
        """``spksep ARGS`` in a forked child."""
        return self._request(kind="spksep", cwd=ROOT, args=[str(a) for a in args],
                             inject=[list(i) for i in inject], env=env or {}, timeout=timeout)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Result:
    """``rc`` (negative: killed by that signal), ``stdout``, ``stderr``, ``seconds``."""

    def __init__(self, rc, stdout, stderr, seconds):
        self.rc, self.stdout, self.stderr, self.seconds = rc, stdout, stderr, seconds

    @property
    def last_line(self):
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""

    def __repr__(self):
        return f"Result(rc={self.rc}, {self.seconds:.1f} s, stderr tail={self.stderr[-1500:]!r})"


# ----------------------------------------------------------------------------- zygote


def _preload():
    """What every entry point imports: paid once, shared by every forked child."""
    import speechbrain
    import speechbrain.utils.logger
    import torch
    import torch._dynamo  # noqa: F401 (what torch.optim imports on first use: ~3 s)

    import spksep_modules.training.brains  # noqa: F401
    import spksep_modules.checkpoints  # noqa: F401
    import spksep_modules.cli  # noqa: F401
    import spksep_modules.data.librimix  # noqa: F401
    import spksep_modules.data.pipeline  # noqa: F401
    import spksep_modules.data.speakers  # noqa: F401
    import spksep_modules.features  # noqa: F401
    import spksep_modules.deploy.separate  # noqa: F401
    import spksep_modules.losses  # noqa: F401
    import spksep_modules.models  # noqa: F401
    import spksep_modules.training.recipe  # noqa: F401
    import spksep_modules.speakers  # noqa: F401
    import spksep_modules.speakers.ge2e  # noqa: F401
    import spksep_modules.speakers.rawnet2  # noqa: F401

    # SpeechBrain writes env.log from `pip freeze` and `git` subprocesses (~2 s per run):
    # computed once here, the same text for every child.
    description = speechbrain.utils.logger.get_environment_description()
    speechbrain.utils.logger.get_environment_description = lambda: description
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])  # its remaining lazy imports


def _child(request, out_path, err_path):
    """Runs in the forked child; never returns."""
    code = 1
    try:
        out = os.open(out_path, os.O_WRONLY | os.O_TRUNC)
        err = os.open(err_path, os.O_WRONLY | os.O_TRUNC)
        os.dup2(out, 1)
        os.dup2(err, 2)
        os.close(out)
        os.close(err)
        os.setpgid(0, 0)  # its own group: DataLoader workers die with it
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        for name, params in request["inject"]:
            INJECTIONS[name](**params)
        try:
            if request["kind"] == "train":
                import runpy

                sys.argv = ["train.py", *request["args"]]
                sys.path.insert(0, request["cwd"])
                runpy.run_path("train.py", run_name="__main__")
                code = 0
            else:
                from spksep_modules.cli import main

                sys.argv = ["spksep", *request["args"]]
                code = main(request["args"])
        except SystemExit as exit:
            if exit.code is None or isinstance(exit.code, int):
                code = exit.code or 0
            else:  # sys.exit("message"): printed, status 1
                print(exit.code, file=sys.stderr)
                code = 1
        except BaseException:
            sys.excepthook(*sys.exc_info())
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _serve():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _preload()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        request = json.loads(line)
        with tempfile.TemporaryDirectory() as tmp:
            out_path, err_path = os.path.join(tmp, "out"), os.path.join(tmp, "err")
            open(out_path, "w").close()
            open(err_path, "w").close()
            sys.stdout.flush()
            sys.stderr.flush()
            start = time.time()
            pid = os.fork()
            if pid == 0:
                _child(request, out_path, err_path)
            rc = _wait(pid, request["timeout"])
            answer = {"rc": rc, "seconds": time.time() - start,
                      "stdout": _read(out_path), "stderr": _read(err_path)}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


def _wait(pid, timeout):
    deadline = time.time() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.time() > deadline:
            _kill_group(pid)
            _, status = os.waitpid(pid, 0)
            return -signal.SIGKILL
        time.sleep(0.01)
    _kill_group(pid)  # leftovers (DataLoader workers) of a killed child
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _kill_group(pid):
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


# ------------------------------------------------------------------------- injections


def _sigkill_self():
    os.kill(os.getpid(), signal.SIGKILL)


class _Checkpoints:
    """Numbers the checkpoint folders SpeechBrain starts writing: 1, 2, ..."""

    def __init__(self):
        self.seen = []

    def index(self, path):
        folder = os.path.dirname(os.fspath(path))
        if not os.path.basename(folder).startswith("CKPT+"):
            return 0
        if folder not in self.seen:
            self.seen.append(folder)
        return self.seen.index(folder) + 1


def disk_full_in_save(checkpoint=2, how="torch"):
    """The ``checkpoint``-th checkpoint hits a full disk: ``how="torch"``: a parameter file
    is left half-written and torch.save fails as it does on a full disk (it really writes
    to ``/dev/full``, whose every write fails with ENOSPC); ``how="meta"``: the parameter
    files are written, CKPT.yaml's temporary file fails with ENOSPC."""
    import builtins
    import errno

    import torch

    index = _Checkpoints().index
    real_save, real_open = torch.save, builtins.open

    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and index(f) == checkpoint and how == "torch":
            with real_open(f, "wb") as out:
                out.write(b"PK\x03\x04 partial")
            return real_save(obj, "/dev/full", *args, **kwargs)  # raises torch's own error
        return real_save(obj, f, *args, **kwargs)

    def open_(file, *args, **kwargs):
        if (how == "meta" and isinstance(file, (str, os.PathLike))
                and os.fspath(file).endswith("CKPT.yaml.tmp") and index(file) == checkpoint):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(file))
        return real_open(file, *args, **kwargs)

    torch.save = save
    builtins.open = open_


def kill_in_save(checkpoint=2, where="param"):
    """``kill -9`` of the run while its ``checkpoint``-th checkpoint is written:
    ``where="param"``: half-way through a parameter file; ``"meta"``: CKPT.yaml's
    temporary file written, not yet renamed; ``"delete"``: while SpeechBrain deletes an
    older checkpoint (after the ``checkpoint``-th one is complete)."""
    import io
    import shutil

    import speechbrain.utils.checkpoints as sb_checkpoints
    import torch

    checkpoints = _Checkpoints()
    index = checkpoints.index
    real_save, real_replace, real_rmtree = torch.save, os.replace, shutil.rmtree

    def save(obj, f, *args, **kwargs):
        n = index(f) if isinstance(f, (str, os.PathLike)) else 0
        if where == "param" and n == checkpoint:
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            with open(f, "wb") as out:
                out.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                out.flush()
            _sigkill_self()
        return real_save(obj, f, *args, **kwargs)

    def replace(src, dst, *args, **kwargs):
        if where == "meta" and os.fspath(dst).endswith("CKPT.yaml") and index(dst) == checkpoint:
            _sigkill_self()
        return real_replace(src, dst, *args, **kwargs)

    def rmtree(path, *args, **kwargs):
        if where == "delete" and len(checkpoints.seen) >= checkpoint:
            files = sorted(os.listdir(path))  # half-deleted: CKPT.yaml stays, a parameter file not
            victim = "separator.ckpt" if "separator.ckpt" in files else files[-1]
            os.remove(os.path.join(path, victim))
            _sigkill_self()
        return real_rmtree(path, *args, **kwargs)

    torch.save = save
    os.replace = replace
    sb_checkpoints.shutil.rmtree = rmtree


def kill_after(seconds):
    """``kill -9`` after ``seconds`` of wall time, wherever the run then is."""
    import threading

    timer = threading.Timer(float(seconds), _sigkill_self)
    timer.daemon = True
    timer.start()


def nan_loss(every=1, max_consecutive=None):
    """Training batches get a NaN loss (every ``every``-th one); ``max_consecutive`` sets
    the non-finite policy's limit (the Brain builds ``SkipNonFinite()`` with the default)."""
    import functools

    import torch

    import spksep_modules.training.brains as brains
    from spksep_modules.losses import SeparationLoss
    from spksep_modules.training.nonfinite import SkipNonFinite

    real_forward, calls = SeparationLoss.forward, [0]

    def forward(self, out, sources):
        terms = real_forward(self, out, sources)
        if torch.is_grad_enabled():  # training batches only
            calls[0] += 1
            if calls[0] % every == 0:
                terms = dict(terms, loss=terms["loss"] * float("nan"),
                             si_snr=terms["si_snr"] * float("nan"))
        return terms

    SeparationLoss.forward = forward
    if max_consecutive is not None:
        brains.SkipNonFinite = functools.partial(SkipNonFinite, max_consecutive=max_consecutive)


def unwritable(path):
    """``path`` cannot be written, nor anything created under it (what a read-only file or
    folder means to a non-root user; root ignores permission bits, so the refusal is
    injected)."""
    import builtins
    import errno

    path = os.path.abspath(path).rstrip("/")
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def denied(file):
        file = os.path.abspath(os.fspath(file))
        return file == path or file.startswith(path + "/")

    def refuse(file):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(file))

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(m in mode for m in "wax+") and denied(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(file, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and denied(file):
            refuse(file)
        return real_os_open(file, flags, *args, **kwargs)

    def mkdir(file, *args, **kwargs):
        if os.path.abspath(os.fspath(file)).startswith(path + "/"):
            refuse(file)
        return real_mkdir(file, *args, **kwargs)

    builtins.open, os.open, os.mkdir = open_, os_open, mkdir  # tempfile and os.makedirs too


def rss_per_epoch(path):
    """Appends ``RSS RSS_TRIMMED`` (bytes) to ``path`` after every epoch: the process's
    resident set size as it is, and after ``malloc_trim(0)`` has handed glibc's free
    pages back (what live objects hold, without the allocator's caching noise)."""
    import ctypes

    import speechbrain as sb

    import spksep_modules.training.brains as brains

    page = os.sysconf("SC_PAGE_SIZE")
    real = brains.SeparationBrain.on_stage_end
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except OSError:  # not glibc
        trim = lambda pad: 0  # noqa: E731

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * page

    def on_stage_end(self, stage, stage_loss, epoch=None):
        result = real(self, stage, stage_loss, epoch)
        if stage == sb.Stage.VALID:
            raw = rss()
            trim(0)
            with open(path, "a") as f:
                f.write(f"{raw} {rss()}\n")
        return result

    brains.SeparationBrain.on_stage_end = on_stage_end


def leak_per_batch():
    """Keeps every training batch's loss, graph included: a leak the RSS test must see."""
    from spksep_modules.losses import SeparationLoss

    real_forward, kept = SeparationLoss.forward, []

    def forward(self, out, sources):
        terms = real_forward(self, out, sources)
        kept.append(terms["loss"])
        return terms

    SeparationLoss.forward = forward


def scramble_rngs(seed):
    """Every global RNG in another state than a fresh process: only the yaml's seed may
    decide what a run computes."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.rand(int(seed) % 97 + 1)


INJECTIONS = {
    "disk_full_in_save": disk_full_in_save,
    "kill_in_save": kill_in_save,
    "kill_after": kill_after,
    "nan_loss": nan_loss,
    "unwritable": unwritable,
    "rss_per_epoch": rss_per_epoch,
    "leak_per_batch": leak_per_batch,
    "scramble_rngs": scramble_rngs,
}


if __name__ == "__main__":
    _serve()
