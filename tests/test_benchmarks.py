"""The benchmark scripts run (a few steps on fake data): a script that breaks with the API is
caught here, not on a GPU machine."""

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
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
    args = argparse.Namespace(root=str(root), workers=0, batch_size=8, steps=4, warmup=1, extra=[])
    trainer = bench.trainer(args, str(tmp_path), "t", "data.imbalance_factor=10", "data.pipeline=loader")
    assert bench.loader_alone(trainer, args) > 0 and bench.device_alone(trainer, args) > 0
    trainer.close()
    assert bench.step_rate(args, str(tmp_path), "s", "data.imbalance_factor=10", "data.pipeline=device") > 0


def test_channels_last_pieces_run(tmp_path):
    bench = load("channels_last")
    root = write_fake_cifar_npz(tmp_path / "c", 10, 20, 2)
    overrides = [
        f"data.root={root}",
        "train.progress=false",
        "optim.epochs=1",
        "optim.warmup_epochs=0",
        "data.imbalance_factor=10",
        "optim.batch_size=16",
    ]
    for flag in (True, False):
        rate, seconds = bench.engine_rates("cifar10_lt/ce", flag, 2, overrides)
        assert rate > 0 and seconds > 0
    assert 0 < bench.batchnorm_error(0.0, False) < 1e-5 and 0 < bench.batchnorm_error(3.0, True) < 1e-2


def test_jpeg_input_compares_the_pipelines(tmp_path, capsys):
    bench = load("jpeg_input")
    with pytest.raises(SystemExit):  # no timed pass: nothing to divide by
        bench.main(["--repeats", "0"])
    assert "--repeats must be >= 1" in capsys.readouterr().err
    if not bench.photo_sources():
        pytest.skip("no sample photographs (matplotlib / scikit-learn) installed")
    assert (
        bench.main(
            [
                "--count",
                "6",
                "--repeats",
                "1",
                "--min-size",
                "40",
                "--max-size",
                "60",
                "--keep",
                str(tmp_path / "jpegs"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("train ", "test "))}
    assert set(rows) == {"train", "test"} and all(len(r) == 8 for r in rows.values())
    assert all(float(x.rstrip("x")) > 0 for r in rows.values() for x in r[-2:])
    assert "read + full-size decode alone" in out and " ms an image" in out
    assert len(list((tmp_path / "jpegs" / "train").rglob("*.JPEG"))) == 6


def test_profile_step_prints_where_the_time_goes(tmp_path, capsys):
    root = write_fake_cifar_npz(tmp_path / "c", 10, 20, 2)
    load("profile_step").main(
        [
            "--root",
            str(root),
            "--steps",
            "2",
            "--warmup",
            "1",
            "--top",
            "3",
            "--set",
            "data.imbalance_factor=10",
            "optim.batch_size=16",
        ]
    )
    out = capsys.readouterr().out
    assert "wall time per step" in out and "top host operations" in out
    assert len([line for line in out.splitlines() if " ms  x" in line]) == 3


def stand_in_bundle(tmp_path):
    """A bundle folder whose unpack script copies a fake CIFAR-10 data set (it fails when the
    destination exists, so a second unpack shows)."""
    data = write_fake_cifar_npz(tmp_path / "fake", 10, 100, 2)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "cifar10_lt_bundle.npz").write_bytes(b"stand-in")
    (bundle / "unpack_bundle.py").write_text(f"import shutil, sys\nshutil.copytree({str(data)!r}, sys.argv[2])\n")
    return bundle


def run_gpu_reproduce(bundle, out, **knobs):
    """benchmarks/gpu_reproduce.sh with one 1-epoch CE row on the CPU; asserts it succeeded."""
    env = {
        **os.environ,
        "ROWS": "ce",
        "JOBS": "1",
        "PROFILE": "0",
        "BENCH": "0",
        "MPS": "0",
        "PYTHON": sys.executable,
        "EXTRA": "optim.epochs=1 optim.warmup_epochs=0",
        **knobs,
    }
    result = subprocess.run(
        ["bash", str(BENCHMARKS / "gpu_reproduce.sh"), str(bundle), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


needs_bash = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and coreutils' timeout"
)


@needs_bash
def test_gpu_reproduce_script_runs_end_to_end_and_resumes_with_work(tmp_path):
    """benchmarks/gpu_reproduce.sh with a stand-in bundle (its unpack script copies a fake data
    set) and one short row: the files it hands back, the progress table, the archives. With
    WORK=DIR it keeps the unpacked data and the runs: a second call does not unpack again (the
    stand-in unpacker fails on an existing folder) and skips the finished run."""
    bundle, work = stand_in_bundle(tmp_path), tmp_path / "work"
    out = tmp_path / "first"
    run_gpu_reproduce(bundle, out, WORK=str(work))
    assert sorted(p.name for p in out.iterdir()) == [
        "device.txt",
        "reproduce.txt",
        "table2_checkpoints.tar.gz.0",
        "table2_runs.tar.gz",
    ]
    assert "MPS: off" in (out / "device.txt").read_text()
    text = (out / "reproduce.txt").read_text()
    assert "reproduce exit status 0" in text
    (row,) = [line.split() for line in text.splitlines() if line.startswith("ce_seed0 ")]
    assert row[:2] == ["ce_seed0", "1"] and row[3:] == ["(final)", "yes"] and 0 <= float(row[2]) <= 100
    with tarfile.open(out / "table2_runs.tar.gz") as runs:
        names = runs.getnames()
    assert "table2/ce_seed0/metrics.json" in names and "table2/report.md" in names
    assert not any("checkpoint" in n for n in names)
    with tarfile.open(out / "table2_checkpoints.tar.gz.0") as checkpoints:
        assert checkpoints.getnames() == ["table2/ce_seed0/checkpoint.pt"]
    assert (work / "table2" / "ce_seed0" / "metrics.json").is_file()

    result = run_gpu_reproduce(bundle, tmp_path / "second", WORK=str(work))
    assert "unpacked by an earlier call" in result.stdout
    text = (tmp_path / "second" / "reproduce.txt").read_text()
    assert "0 to train" in text and "finished, skipped" in text
    with tarfile.open(tmp_path / "second" / "table2_runs.tar.gz") as runs:
        assert "table2/ce_seed0/metrics.json" in runs.getnames()


def test_fisher_scaling_prints_auto_and_exact(capsys):
    load("fisher_scaling").main(["--classes", "8", "--dim", "32", "--per-class", "4"])
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.startswith("| 8 | 32 | 4 | 28 | 6 |"), row  # 4 + 4 - 2: the pooled rank


def numbers(line):
    """The numbers of a printed table row (``x`` of ratios and ``|`` of markdown dropped)."""
    values = []
    for word in line.replace("|", " ").split():
        try:
            values.append(float(word.rstrip("x")))
        except ValueError:
            pass
    return values


def test_throughput_compares_the_engine_with_a_bare_loop(tmp_path, capsys):
    root = write_fake_cifar_npz(tmp_path / "c", 10, 100, 2)  # the script's IF 100 keeps 1 image of class 9
    load("throughput").main(["--root", str(root), "--workers", "0", "--batch-size", "8"])
    out = capsys.readouterr().out
    epoch = next(line for line in out.splitlines() if line.startswith("epoch 1:"))
    assert len(numbers(epoch)) == 2 and all(v > 0 for v in numbers(epoch)), out  # engine, bare img/s
    assert "ratio" in out and "where the time goes: data pipeline alone" in out and " ms per step" in out


def test_methods_throughput_runs_the_teacher_and_multi_expert_methods(tmp_path, capsys):
    root = write_fake_cifar_npz(tmp_path / "c", 10, 100, 2)
    presets = ["ce", "dbm_bcl", "dbm_gml", "dbm_ncl"]
    args = ["--root", str(root), "--images", "8", "--batch-size", "8", "--workers", "0", "--rounds", "1"]
    load("methods_throughput").main([*args, "--presets", *presets])
    lines = capsys.readouterr().out.splitlines()
    table = {line.split()[0]: numbers(line) for line in lines[lines.index("") + 2 :]}
    assert list(table) == presets and table["ce"][1] == 1.0 and all(r > 0 and x > 0 for r, x in table.values())


def test_loss_overhead_times_every_shape(capsys):
    bench = load("loss_overhead")
    bench.main(["--rounds", "1", "--calls", "1", "--device", "cpu", "--system-malloc"])
    lines = capsys.readouterr().out.splitlines()[2:]
    rows = [numbers(line) for line in lines]
    assert [tuple(int(v) for v in row[:2]) for row in rows] == bench.SHAPES
    # B, C, two times in ms, the DBM-BS ratio, the target where there is one, three more ratios
    assert [len(row) for row in rows] == [8 if shape not in bench.TARGETS else 9 for shape in bench.SHAPES]
    assert all(v > 0 for row in rows for v in row), rows
    assert all(
        ("ok" in line or "MISSED" in line) == (shape in bench.TARGETS) for line, shape in zip(lines, bench.SHAPES)
    )


def test_resnet50_step_times_four_variants(capsys):
    load("resnet50_step").main(["--batch-size", "2", "--size", "32", "--steps", "1", "--classes", "10"])
    rows = [line for line in capsys.readouterr().out.splitlines() if "ms/step" in line]
    assert [" ".join(row.split()[:2]) for row in rows] == [
        "float32, contiguous",
        "float32, channels-last",
        "bfloat16 autocast,",
        "bfloat16 autocast,",
    ]
    assert all(numbers(row)[-2] > 0 for row in rows)


def test_step_overhead_compares_the_engine_step_with_a_bare_loop(capsys):
    load("step_overhead").main(["--steps", "2", "--rounds", "1", "--batch-size", "8"])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): numbers(line) for line in out.splitlines() if line.startswith("| demo/")}
    assert list(rows) == ["demo/ce", "demo/dbm_ce"], out
    for ms_engine, ms_bare, ratio, ops_engine, ops_bare, own, ops_model in rows.values():
        assert ms_engine > 0 and ms_bare > 0 and ratio == pytest.approx(ms_engine / ms_bare, rel=0.02, abs=2e-3)
        assert own == ops_engine - ops_bare and ops_bare > ops_model > 0
    assert "target: engine <= 1.15x the bare loop; worst here" in out
