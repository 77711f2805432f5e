"""The start-of-run warning when other programs keep the CPU cores busy."""

import logging
from unittest import mock

import pytest

from spksep_modules.training import cpu_load
from spksep_modules.training.cpu_load import oversubscription, warn_if_oversubscribed


@pytest.mark.parametrize("threads, load, cores", [(2, 0.0, 2), (2, 0.4, 2), (1, 1.0, 2), (8, 7.5, 16)])
def test_fits(threads, load, cores):
    assert oversubscription(threads, load, cores) is None


@pytest.mark.parametrize("threads, load, cores, free", [(2, 1.0, 2, 1), (2, 2.0, 2, 1), (16, 4.0, 16, 12)])
def test_oversubscribed_names_the_free_cores(threads, load, cores, free):
    message = oversubscription(threads, load, cores)
    assert f"{threads} threads on {cores} cores" in message
    assert message.endswith(f"OMP_NUM_THREADS={free}")
    assert "\n" not in message


def test_warning_is_logged_from_the_machine_state(caplog):
    with mock.patch.object(cpu_load.os, "getloadavg", return_value=(1.2, 1.0, 1.0)), \
            mock.patch.object(cpu_load.os, "sched_getaffinity", return_value={0, 1}, create=True), \
            mock.patch.object(cpu_load.torch, "get_num_threads", return_value=2), \
            caplog.at_level(logging.WARNING, logger=cpu_load.__name__):
        message = warn_if_oversubscribed()
    assert message and "1.2 of which" in message
    assert [r.getMessage() for r in caplog.records] == [message]


def test_quiet_on_an_idle_machine(caplog):
    with mock.patch.object(cpu_load.os, "getloadavg", return_value=(0.05, 0.0, 0.0)), \
            mock.patch.object(cpu_load.os, "sched_getaffinity", return_value={0, 1}, create=True), \
            mock.patch.object(cpu_load.torch, "get_num_threads", return_value=2), \
            caplog.at_level(logging.WARNING, logger=cpu_load.__name__):
        assert warn_if_oversubscribed() is None
    assert not caplog.records


def test_no_load_average_no_warning():
    with mock.patch.object(cpu_load.os, "getloadavg", side_effect=OSError):
        assert warn_if_oversubscribed() is None
