import pytest

from dbm_ltr.losses import margins


@pytest.fixture(params=["numpy", "torch"])
def per_sample_path(request, monkeypatch):
    """Run a test on the CPU's NumPy per-sample path and on the torch path other devices use."""
    if request.param == "torch":
        monkeypatch.setattr(margins, "_numpy_path", lambda device: False)
    return request.param
