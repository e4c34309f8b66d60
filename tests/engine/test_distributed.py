"""Two processes under torchrun (gloo on the CPU): the engine's DDP path end to end."""

import json
import os
import subprocess
import sys

import pytest
from fakes import tiny_overrides


def test_torchrun_two_processes(fake_cifar10, tmp_path):
    run = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "dbm_ltr.cli", "train", "--config", "cifar10_lt/dbm_bs", "--out", str(run),
        "--set", *tiny_overrides(fake_cifar10, epochs=1), "train.device=cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "x2" in result.stdout  # the run header names both processes
    metrics = json.loads((run / "metrics.json").read_text())
    # the evaluation shards cover the whole test set once: 10 images a class, none twice
    assert all(v is not None for v in metrics["per_class"])
    assert all(v * 10 % 100 == pytest.approx(0, abs=1e-6) for v in metrics["per_class"])
    assert result.stdout.count("run directory:") == 1  # only rank 0 reports
