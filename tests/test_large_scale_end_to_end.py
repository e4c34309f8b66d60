"""The ImageNet-LT path end to end on real JPEG files: the CIFAR-10-LT subset written in the
ImageNet-LT layout by scripts/cifar_to_imagenet_layout.py, a ResNet-50 preset at a reduced
input size for one epoch, then metrics.json and dbm-ltr analyze."""

import importlib.util
import json
from pathlib import Path

from fakes import write_fake_cifar_npz

from dbm_ltr import cli

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "cifar_to_imagenet_layout.py"


def test_resnet50_preset_trains_one_epoch_on_jpegs_and_analyzes(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("cifar_to_imagenet_layout", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cifar = write_fake_cifar_npz(tmp_path / "cifar", 10, train_per_class=12, test_per_class=2)
    root = tmp_path / "jpeg"
    assert script.main(["--root", str(cifar), "--out", str(root), "--imbalance-factor", "4"]) == 0
    run = tmp_path / "run"
    overrides = [
        f"data.root={root}",
        "data.image_size=32",
        "optim.epochs=1",
        "optim.warmup_epochs=0",
        "optim.batch_size=16",
        "data.workers=0",
        "train.progress=false",
        "data.eval_batch_size=20",
    ]
    assert cli.main(["train", "--config", "imagenet_lt/dbm_bs", "--out", str(run), "--set", *overrides]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["data"] == "imagenet_lt" and metrics["epoch"] == 1 and len(metrics["per_class"]) == 10
    assert metrics["cls_num_list"][0] == 12 and 0 <= metrics["top1"] <= 100
    capsys.readouterr()
    assert cli.main(["analyze", str(run), "--out", str(tmp_path / "analysis")]) == 0
    assert (tmp_path / "analysis" / "analysis.md").is_file()
    assert "angle" in capsys.readouterr().out.lower()
