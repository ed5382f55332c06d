import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """The tensors in these tests are tiny: extra threads only add overhead, and the 2 CI cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
