import pytest
import torch


@pytest.fixture(scope="session")
def tiny_runs(fake_cifar10_root, tmp_path_factory):
    """Two finished 1-epoch runs on the fake data: CE (linear head) and DBM-CE (cosine head)."""
    from analysis_helpers import tiny_overrides

    from dbm_ltr.engine import Trainer, load_config

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("runs")
    runs = {}
    for preset in ("cifar10_lt/ce", "cifar10_lt/dbm_ce"):
        run = base / preset.split("/")[1]
        Trainer(load_config(preset, tiny_overrides(fake_cifar10_root)), run, log=lambda m: None).fit()
        runs[preset.split("/")[1]] = run
    torch.set_num_threads(before)
    return runs
