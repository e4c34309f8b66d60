"""Several processes (gloo on the CPU): the engine's DDP path end to end, SyncBatchNorm, and a
run resumed with another number of processes."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from fakes import tiny_overrides, torchrun_failure

from dbm_ltr.engine import Trainer, load_config
from dbm_ltr.engine.build import wrap_model as _wrap
from dbm_ltr.engine.distributed import DistInfo, shard_indices, sync_buffers
from dbm_ltr.losses import create_loss
from dbm_ltr.methods import create_method

COUNTS = [50, 20, 8, 4]


def _method():
    torch.manual_seed(0)
    loss = create_loss("dbm", COUNTS, base="bs")
    return create_method(
        "standard",
        trunk="resnet32",
        classifier="cosine",
        num_classes=4,
        cls_num_list=COUNTS,
        loss=loss,
        loss_name="dbm",
    )


def _batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3, 0, 1, 0, 2])


def _ddp_worker(rank, world, init_file, out_dir, sync_bn):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    method = _method()
    model = _wrap(method, DistInfo(rank, world, rank), torch.device("cpu"), sync_bn=sync_bn)
    x, y = _batch()
    half = slice(rank * 4, rank * 4 + 4)
    out = model(x[half], y[half], 0)
    out.loss.backward()
    loss = out.loss.detach().clone()
    dist.all_reduce(loss)
    grads = {n: p.grad for n, p in method.named_parameters() if p.grad is not None}
    own = {n: b.clone() for n, b in method.named_buffers() if "running_mean" in n}
    sync_buffers(method)  # as before an evaluation: rank 0's BatchNorm statistics everywhere
    synced = {n: b.clone() for n, b in method.named_buffers() if "running_mean" in n}
    torch.save({"loss": loss / world, "grads": grads, "own": own, "synced": synced}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_two_processes_match_one_process_on_the_global_batch(tmp_path):
    """Two processes, each with half of a global batch of 8, give the loss and gradients of one
    process on the whole batch taken as the same two halves (each half's BatchNorm statistics
    its own, as in each process; DDP averages the gradients). SyncBatchNorm (train.sync_bn,
    statistics over the global batch) needs CUDA devices. Before an evaluation every process
    takes rank 0's BatchNorm statistics (each moved its own with its own half)."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path), False), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    method = _method()
    x, y = _batch()
    loss = (method(x[:4], y[:4], 0).loss + method(x[4:], y[4:], 0).loss) / 2
    loss.backward()
    want = {n: p.grad for n, p in method.named_parameters() if p.grad is not None}
    assert ranks[0]["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
    for r in ranks:  # DDP leaves the same averaged gradients in every process
        assert r["grads"].keys() == want.keys()
        worst = max(
            ((r["grads"][n] - want[n]).abs().max() / want[n].abs().max().clamp_min(1e-12)).item()
            for n in want
            if want[n].abs().max() > 1e-6
        )
        assert worst < 1e-4
    own, synced = ranks[1]["own"], ranks[1]["synced"]
    assert own and all(torch.equal(synced[n], ranks[0]["own"][n]) for n in own)
    assert not all(torch.equal(own[n], ranks[0]["own"][n]) for n in own)


def test_torchrun_resumes_a_one_process_run_with_two(fake_cifar10, tmp_path):
    """Epoch 1 in one process, epoch 2 under torchrun with two (the global batch is kept);
    the evaluation shards cover the test set once and only rank 0 reports."""
    run = tmp_path / "ddp"
    overrides = tiny_overrides(fake_cifar10, epochs=2) + ["train.device=cpu"]
    first = Trainer(load_config("cifar10_lt/dbm_bs", overrides), run, log=lambda m: None)
    first.history.append(first.train_one_epoch(0))
    first._save(1)
    first.close()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "dbm_ltr.cli",
        "train",
        "--config",
        "cifar10_lt/dbm_bs",
        "--out",
        str(run),
        "--resume",
        "--set",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, torchrun_failure(result)
    assert "resuming" in result.stdout and "x2" in result.stdout  # the run header names both processes
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epoch"] == 2
    # the evaluation shards cover the whole test set once: 10 images a class, none twice
    assert all(v is not None for v in metrics["per_class"])
    assert all(v * 10 % 100 == pytest.approx(0, abs=1e-6) for v in metrics["per_class"])
    assert result.stdout.count("run directory:") == 1  # only rank 0 reports


def test_a_worker_that_left_its_process_group_ends_without_the_interpreters_teardown(tmp_path):
    """A DDP model keeps the gloo process group (and its threads) alive after it is destroyed;
    the interpreter's teardown around them aborted about one torchrun worker in three
    (SIGABRT, "terminate called without an active exception"). After end_distributed the
    process ends at once with its exit code and its output flushed; before, nothing happens."""
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import torch, torch.distributed as dist
            from torch.nn.parallel import DistributedDataParallel as DDP
            from dbm_ltr.engine.distributed import end_distributed, exit_after_distributed
            exit_after_distributed(5)  # not in a group: returns
            dist.init_process_group("gloo", init_method="file://{tmp_path / "init"}", rank=0, world_size=1)
            DDP(torch.nn.Linear(4, 2))(torch.randn(8, 4)).sum().backward()
            end_distributed()
            print("left", end="")
            exit_after_distributed(3)
            print("not reached")
            """
        )
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout) == (3, "left"), result.stderr[-2000:]


def test_a_worker_that_fails_after_leaving_its_group_shows_the_traceback_and_exits_1(tmp_path):
    """A bug (or any failure under DBM_LTR_DEBUG) after the worker left its process group: the
    traceback, then the same ending as a clean run (exit status 1, no teardown, so no atexit
    hook), not a teardown that may abort."""
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import atexit, torch, torch.distributed as dist
            from torch.nn.parallel import DistributedDataParallel as DDP
            from dbm_ltr import cli
            atexit.register(print, "teardown")
            from dbm_ltr.engine.distributed import end_distributed
            dist.init_process_group("gloo", init_method="file://{tmp_path / "init"}", rank=0, world_size=1)
            DDP(torch.nn.Linear(4, 2))(torch.randn(8, 4)).sum().backward()

            def failing(args):
                end_distributed()
                raise RuntimeError("a bug after the run")

            cli.cmd_eval = failing
            cli.main(["eval", "--checkpoint", "run"])
            print("not reached")
            """
        )
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout) == (1, ""), result.stdout + result.stderr[-2000:]
    assert result.stderr.rstrip().endswith("RuntimeError: a bug after the run"), result.stderr[-2000:]


def test_a_cuda_index_beyond_the_visible_devices_is_a_config_error(monkeypatch):
    from dbm_ltr.engine.distributed import pick_device
    from dbm_ltr.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    assert pick_device("cuda", local_rank=3) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"train.device=cuda:2 but this process sees 2 CUDA device\(s\)"):
        pick_device("cuda:2")


@pytest.mark.parametrize("n,world", [(101, 2), (10, 3), (2, 4), (0, 2)])
def test_evaluation_shards_cover_the_test_set_once(n, world):
    """Each process scores its shard; together every image exactly once, none padded in."""
    shards = [shard_indices(n, DistInfo(rank=r, world_size=world)) for r in range(world)]
    assert sorted(i for shard in shards for i in shard) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_sync_bn_converts_every_batchnorm_and_keeps_the_parameters(monkeypatch):
    """train.sync_bn (the ImageNet GML presets): every BatchNorm becomes a SyncBatchNorm with
    the same parameter objects, so the optimizer built before the wrapping trains them, and
    the same statistics (DDP itself is left out here: it needs a process group)."""
    import torch.nn.parallel

    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda module, device_ids: module)
    method = _method()
    before = {id(p) for p in method.parameters()}
    stats = {n: b.clone() for n, b in method.named_buffers()}
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in method.modules())
    wrapped = _wrap(method, DistInfo(rank=0, world_size=2), torch.device("cpu"), sync_bn=True)
    norms = [m for m in wrapped.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert {id(p) for p in wrapped.parameters()} == before
    assert all(torch.equal(b, stats[n]) for n, b in wrapped.named_buffers())
