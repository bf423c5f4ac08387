"""Fixtures shared by the whole suite."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One torch thread: the test problems are tiny, and threads only add noise (and on a loaded
    2-core machine, many times the run time) without changing any result the tests check."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
