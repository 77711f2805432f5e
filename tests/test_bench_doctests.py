"""The examples in the benchmarks' docstrings run (``make test`` collects doctests from
``spksep_modules`` only; the benches live in ``bench/``)."""

import doctest

import pytest

from bench_scripts import load_bench


@pytest.mark.parametrize("name", ["bench", "bench_time_to_quality", "bench_perceptual_quality"])
def test_bench_docstring_examples(name):
    result = doctest.testmod(load_bench(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
