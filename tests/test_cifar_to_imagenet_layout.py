"""scripts/cifar_to_imagenet_layout.py: CIFAR-10-LT as JPEGs in the ImageNet-LT layout."""

import importlib.util
import io
from pathlib import Path

import numpy as np
from fakes import write_fake_cifar_npz
from PIL import Image

from dbm_ltr.data import create_dataset

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "cifar_to_imagenet_layout.py"


def load_script():
    spec = importlib.util.spec_from_file_location("cifar_to_imagenet_layout", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_writes_the_long_tailed_subset_as_imagenet_lt(tmp_path, capsys):
    cifar = write_fake_cifar_npz(tmp_path / "cifar", 10, train_per_class=20, test_per_class=3)
    out = tmp_path / "jpeg"
    assert load_script().main(["--root", str(cifar), "--out", str(out), "--imbalance-factor", "10"]) == 0
    assert "training images" in capsys.readouterr().out
    lt = create_dataset("cifar10_lt", str(cifar), train=True, imbalance_factor=10)
    train = create_dataset("imagenet_lt", str(out), train=True)
    assert train.cls_num_list == lt.cls_num_list and train.classes == lt.classes
    assert sorted(train.targets) == sorted(lt.targets)
    first = [i for i, y in enumerate(train.targets) if y == lt.targets[0]][0]
    assert train.samples[first][0].endswith("train/class0/class0_0.JPEG")
    img = np.asarray(train[first][0])  # the first CIFAR image, JPEG-encoded at quality 95
    buf = io.BytesIO()
    Image.fromarray(lt.data[0]).save(buf, "JPEG", quality=95)
    assert np.array_equal(img, np.asarray(Image.open(buf).convert("RGB")))
    test = create_dataset("imagenet_lt", str(out), train=False)
    assert len(test) == 30 and test.cls_num_list == [3] * 10


def test_upscaling(tmp_path):
    cifar = write_fake_cifar_npz(tmp_path / "cifar", 10, train_per_class=100, test_per_class=1)
    out = tmp_path / "big"
    load_script().main(["--root", str(cifar), "--out", str(out), "--size", "48"])
    ds = create_dataset("imagenet_lt", str(out), train=False)
    assert np.asarray(ds[0][0]).shape == (48, 48, 3)
    assert ds.cls_num_list == [1] * 10
