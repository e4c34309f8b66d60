"""The benchmark scripts run (a few steps on fake data): a script that breaks with the API is
caught here, not on a GPU machine."""

import argparse
import importlib.util
from pathlib import Path

from fakes import write_fake_cifar_npz

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_throughput_pieces_run(tmp_path):
    bench = load("gpu_throughput")
    root = write_fake_cifar_npz(tmp_path / "c", 10, 20, 2)
    args = argparse.Namespace(root=str(root), workers=0, batch_size=16, steps=2, warmup=1, extra=[])
    trainer = bench.trainer(args, str(tmp_path), "t", "data.imbalance_factor=10", "data.pipeline=loader")
    assert bench.loader_alone(trainer, args) > 0 and bench.device_alone(trainer, args) > 0
    trainer.close()
    assert bench.step_rate(args, str(tmp_path), "s", "data.imbalance_factor=10", "data.pipeline=device") > 0


def test_profile_step_prints_where_the_time_goes(tmp_path, capsys):
    root = write_fake_cifar_npz(tmp_path / "c", 10, 20, 2)
    load("profile_step").main(["--root", str(root), "--steps", "2", "--warmup", "1", "--top", "3",
                               "--set", "data.imbalance_factor=10", "optim.batch_size=16"])
    out = capsys.readouterr().out
    assert "wall time per step" in out and "top host operations" in out
    assert len([line for line in out.splitlines() if " ms  x" in line]) == 3
