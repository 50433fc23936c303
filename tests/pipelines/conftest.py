"""The pipeline tests run tiny models: one thread is faster (no OpenMP hand-offs on a busy machine) and is
how the official reference cases were computed."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
