"""The examples in the benchmarks' docstrings run (``make test`` collects doctests from
``spksep_modules`` only; the benches live in ``bench/``)."""

import doctest
import importlib.util
import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench")


@pytest.mark.parametrize("name", ["bench", "bench_time_to_quality", "bench_perceptual_quality"])
def test_bench_docstring_examples(name, monkeypatch):
    monkeypatch.syspath_prepend(BENCH)  # the benches import each other by name
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
