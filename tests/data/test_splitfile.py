"""Split-file data sets (ImageNet-LT, iNaturalist 2018, Places-LT) on fake trees of tiny JPEGs
in the real layouts: counts, classes, splits, every error message, corrupt images."""

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from jpeg_fakes import listed_path, rewrite_listing, write_imagenet_lt, write_inat, write_jpeg
from PIL import Image
from torch.utils.data import DataLoader

from dbm_ltr.data import (
    DATASET_INFO,
    DATASETS,
    CorruptImageError,
    DatasetNotFoundError,
    MissingImageError,
    SplitFileError,
    build_transform,
    create_dataset,
)


def make(name, root, train=True, **options):
    """The registered factory with the split-file options (``create_dataset`` passes only
    its own keywords; the engine wires ``split_dir`` / ``skip_corrupt`` / ``decode``)."""
    return DATASETS.lookup(name)(root=root, train=train, **options)


@pytest.fixture
def imagenet(tmp_path):
    return write_imagenet_lt(tmp_path / "imagenet", counts=(6, 4, 2), test_per_class=2, val_per_class=1)


def test_imagenet_lt_train_split(imagenet):
    ds = create_dataset("imagenet_lt", imagenet.root, train=True, imbalance_factor=50, seed=3)  # both ignored
    assert ds.split == "train" and ds.split_file.endswith("ImageNet_LT_train.txt")
    assert len(ds) == 12 and ds.num_classes == 3
    assert ds.cls_num_list == ds.train_cls_num_list == [6, 4, 2]
    assert ds.classes == imagenet.wnids and ds.class_to_idx[imagenet.wnids[1]] == 1
    listed = {(os.path.join(imagenet.root, p), y) for p, y in imagenet.lists["train"]}
    assert set(ds.samples) == listed and ds.targets == [y for _, y in ds.samples]
    assert all(type(y) is int for y in ds.targets)
    img, y = ds[0]  # no transform: the PIL image, as ImageFolder
    assert isinstance(img, Image.Image) and img.mode == "RGB" and y == ds.targets[0]
    assert np.asarray(img).shape[:2] == Image.open(ds.samples[0][0]).size[::-1]


def test_eval_split_is_the_papers(imagenet, tmp_path):
    test = make("imagenet_lt", imagenet.root, train=False)
    assert test.split == "test" and len(test) == 6 and test.cls_num_list == [2, 2, 2]
    assert test.train_cls_num_list == [6, 4, 2] and test.classes == imagenet.wnids
    val = make("imagenet_lt", imagenet.root, train=False, split="val")
    assert val.split == "val" and len(val) == 3
    inat = write_inat(tmp_path / "inat", counts=(5, 3, 1, 1), val_per_class=2)
    v = make("inat2018", inat.root, train=False)
    assert v.split == "val" and v.cls_num_list == [2, 2, 2, 2] and v.train_cls_num_list == [5, 3, 1, 1]
    with pytest.raises(ValueError, match="iNaturalist 2018 has no test split"):
        make("inat2018", inat.root, train=False, split="test")
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        make("imagenet_lt", imagenet.root, train=True, split="dev")


def test_dataset_info_and_transforms(imagenet):
    for name, prefix in (("imagenet_lt", "imagenet"), ("inat2018", "inat"), ("places_lt", "imagenet")):
        info = DATASET_INFO[name]
        assert info["num_classes"] is None
        assert (info["train_transform"], info["test_transform"], info["contrastive_transform"]) == (
            f"{prefix}_train",
            f"{prefix}_test",
            f"{prefix}_contrastive",
        )
    assert DATASET_INFO["inat2018"]["expected_num_classes"] == 8142
    ds = create_dataset("imagenet_lt", imagenet.root, train=True, transform=build_transform("imagenet_train"))
    img, _ = ds[1]
    assert img.shape == (3, 224, 224) and img.dtype == torch.float32


def test_inat_json_and_txt(tmp_path):
    inat = write_inat(tmp_path / "j", counts=(4, 2, 1), fmt="json")
    ds = make("inat2018", inat.root, train=True)
    assert ds.split_file.endswith("train2018.json")
    assert ds.cls_num_list == [4, 2, 1] and ds.classes == ["species_0", "species_1", "species_2"]
    assert ds.samples[0] == (os.path.join(inat.root, inat.lists["train"][0][0]), 0)
    assert make("inat2018", inat.root, train=False).cls_num_list == [2, 2, 2]
    txt = write_inat(tmp_path / "t", counts=(4, 2, 1), fmt="txt")
    ds = make("inat2018", txt.root, train=True)
    assert ds.split_file.endswith("iNaturalist18_train.txt") and ds.classes == ["0", "1", "2"]  # folder = id
    # an image without annotation
    data = (Path(inat.root) / "train2018.json").read_text().replace('"image_id": 1,', '"image_id": 999,')
    (Path(inat.root) / "train2018.json").write_text(data)
    with pytest.raises(SplitFileError, match=r"train2018.json: image id 1 \(train_val2018/.*\) has no annotation"):
        make("inat2018", inat.root, train=True)


def test_places_lt_and_split_dir(tmp_path):
    root = tmp_path / "places"
    rng = np.random.RandomState(0)
    lines = {"train": [], "test": []}
    for c, name in enumerate(["airfield", "bedroom"]):
        for i in range(3 - c):
            rel = f"data_256/{name[0]}/{name}/{i:08d}.jpg"
            write_jpeg(root / rel, rng, (100 + 50 * c, 90, 80))
            lines["train" if i < 2 - c else "test"].append(f"/{rel} {c}")
    lines["test"].append(lines["train"][0])
    splits = tmp_path / "splits"
    splits.mkdir()
    for split, items in lines.items():
        (splits / f"Places_LT_{split}.txt").write_text("\n".join(items) + "\n")
    ds = make("places_lt", str(root), train=True, split_dir=str(splits))
    assert ds.classes == ["airfield", "bedroom"] and ds.cls_num_list == [2, 1]
    assert os.path.isfile(ds.samples[0][0])  # the leading "/" is relative to root
    assert make("places_lt", str(root), train=False, split_dir=str(splits)).split == "test"


def test_missing_root_and_split_files(imagenet, tmp_path):
    with pytest.raises(
        DatasetNotFoundError, match=f"ImageNet-LT: the root folder {tmp_path / 'nowhere'} does not exist"
    ):
        make("imagenet_lt", str(tmp_path / "nowhere"), train=True)
    with pytest.raises(DatasetNotFoundError, match=r"split-file folder .*nope \(data.split_dir\) does not exist"):
        make("imagenet_lt", imagenet.root, train=True, split_dir=str(tmp_path / "nope"))
    os.remove(os.path.join(imagenet.root, "ImageNet_LT_test.txt"))
    other = tmp_path / "split_files"
    other.mkdir()
    with pytest.raises(DatasetNotFoundError) as err:
        make("imagenet_lt", imagenet.root, train=False, split_dir=str(other))
    message = str(err.value)
    assert "ImageNet-LT (test split): split file not found: looked for 'ImageNet_LT_test.txt'" in message
    assert f"in {other} and {imagenet.root}" in message and "data.split_dir" in message
    empty = tmp_path / "empty_inat"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError, match="looked for 'iNaturalist18_train.txt' or 'train2018.json'"):
        make("inat2018", str(empty), train=True)
    # the eval split needs the train split too (it defines the classes)
    shutil.copy(os.path.join(imagenet.root, "ImageNet_LT_val.txt"), other / "ImageNet_LT_test.txt")
    os.remove(os.path.join(imagenet.root, "ImageNet_LT_train.txt"))
    with pytest.raises(DatasetNotFoundError, match=r"\(train split\): split file not found"):
        make("imagenet_lt", imagenet.root, train=False, split_dir=str(other))


@pytest.mark.parametrize(
    "edit,split,match",
    [
        (
            lambda i, ln: ln.replace(" 1", " one") if i == 2 and ln.endswith(" 1") else ln,
            "train",
            None,
        ),  # filled in below
        (lambda i, ln: ln.rsplit(" ", 1)[0] + " -1" if i == 3 else ln, "train", r"line 4: negative label -1"),
        (
            lambda i, ln: ln.rsplit(" ", 1)[0] + " 7" if i == 0 else ln,
            "test",
            r"ImageNet_LT_test.txt line 1: label 7 but the train split \(.*ImageNet_LT_train.txt\) has only 3 classes",
        ),
        (
            lambda i, ln: ln.rsplit(" ", 1)[0] + " x2" if i == 1 else ln,
            "test",
            r"ImageNet_LT_test.txt line 2: the label 'x2' is not an integer",
        ),
        (
            lambda i, ln: "justonefield" if i == 0 else ln,
            "train",
            r"ImageNet_LT_train.txt line 1: expected 'relative/path label', got 'justonefield'",
        ),
    ],
)
def test_bad_labels_name_file_and_line(imagenet, edit, split, match):
    path = os.path.join(imagenet.root, f"ImageNet_LT_{split}.txt")
    if match is None:  # a non-integer label on line 3 of the train split
        edit = lambda i, ln: ln.rsplit(" ", 1)[0] + " 1.5" if i == 2 else ln  # noqa: E731
        match = r"ImageNet_LT_train.txt line 3: the label '1.5' is not an integer"
    rewrite_listing(path, edit)
    with pytest.raises(SplitFileError, match=match):
        make("imagenet_lt", imagenet.root, train=split == "train", check_first=0)


def test_class_without_training_images(imagenet):
    path = os.path.join(imagenet.root, "ImageNet_LT_train.txt")
    rewrite_listing(path, lambda i, ln: ln.rsplit(" ", 1)[0] + " 4" if ln.endswith(" 2") else ln)
    with pytest.raises(
        SplitFileError,
        match=r"ImageNet_LT_train.txt: 2 class\(es\) have no training image: 2, 3 "
        r"\(.*C = max label \+ 1 = 5\)",
    ):
        make("imagenet_lt", imagenet.root, train=True)


def test_missing_images(imagenet):
    train_txt = os.path.join(imagenet.root, "ImageNet_LT_train.txt")
    second = listed_path(imagenet.root, train_txt, 1)
    os.remove(second)
    with pytest.raises(
        MissingImageError, match=rf"{second}: no such file \(.*ImageNet_LT_train.txt line 2; 1 of the first"
    ):
        make("imagenet_lt", imagenet.root, train=True)
    ds = make("imagenet_lt", imagenet.root, train=True, check_first=0)  # found lazily
    index = [p for p, _ in ds.samples].index(second)
    with pytest.raises(
        MissingImageError,
        match=rf"{second}: no such file \(.*ImageNet_LT_train.txt line 2; "
        r"data.skip_corrupt=true",
    ):
        ds[index]
    shutil.rmtree(os.path.join(imagenet.root, "train"))
    with pytest.raises(DatasetNotFoundError, match="none of the first 12 images of .*ImageNet_LT_train.txt exists"):
        make("imagenet_lt", imagenet.root, train=True, check_first=100)


@pytest.mark.parametrize("transform", [None, "imagenet_train"])
def test_corrupt_image_error_or_skip(imagenet, transform):
    train_txt = os.path.join(imagenet.root, "ImageNet_LT_train.txt")
    bad = listed_path(imagenet.root, train_txt, 4)
    data = open(bad, "rb").read()
    open(bad, "wb").write(data[: len(data) // 3])  # truncated
    t = build_transform(transform) if transform else None
    ds = make("imagenet_lt", imagenet.root, train=True, transform=t)
    with pytest.raises(CorruptImageError, match=rf"cannot read image {bad}: .*ImageNet_LT_train.txt line 5"):
        ds[4]
    skip = make("imagenet_lt", imagenet.root, train=True, transform=t, skip_corrupt=True)
    assert skip.skipped == 0
    with pytest.warns(UserWarning, match=f"skipping unreadable image {bad}"):
        img, y = skip[4]
    assert y == skip.targets[5] and skip.skipped == 1  # replaced by the next image, with its label
    if transform is None:
        assert np.array_equal(np.asarray(img), np.asarray(skip[5][0]))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        skip[4]
    assert not [w for w in seen if "skipping" in str(w.message)]  # warned once per process
    assert skip.skipped == 2


def test_skip_count_is_shared_by_loader_workers(imagenet):
    train_txt = os.path.join(imagenet.root, "ImageNet_LT_train.txt")
    for k in (2, 7):
        open(listed_path(imagenet.root, train_txt, k), "wb").write(b"garbage")
    ds = make("imagenet_lt", imagenet.root, train=True, skip_corrupt=True, transform=build_transform("imagenet_test"))
    batches = list(DataLoader(ds, batch_size=4, num_workers=2))
    assert sum(len(b[1]) for b in batches) == 12
    assert ds.skipped == 2


def test_loader_workers_report_the_file(imagenet):
    train_txt = os.path.join(imagenet.root, "ImageNet_LT_train.txt")
    bad = listed_path(imagenet.root, train_txt, 3)
    open(bad, "wb").write(b"garbage")
    ds = make("imagenet_lt", imagenet.root, train=True, transform=build_transform("imagenet_test"))
    with pytest.raises(CorruptImageError, match=f"(?s)cannot read image {bad}.*ImageNet_LT_train.txt line 4"):
        list(DataLoader(ds, batch_size=4, num_workers=1))  # re-raised in the main process
    with pytest.raises(ValueError):  # the CLI reports ValueErrors as configuration / data errors
        ds[3]


def test_decode_modes(imagenet):
    with pytest.raises(ValueError, match="decode must be one of cpu, pil, device"):
        make("imagenet_lt", imagenet.root, train=True, decode="gpu")
    t = build_transform("imagenet_test")
    fast = make("imagenet_lt", imagenet.root, train=False, transform=t)
    plain = make("imagenet_lt", imagenet.root, train=False, transform=t, decode="pil")
    assert fast[0][0].shape == plain[0][0].shape == (3, 224, 224)
    assert (fast[0][0] - plain[0][0]).abs().max() < 0.05  # same decode, same resize kernel
    if not torch.cuda.is_available():
        with pytest.warns(UserWarning, match="decode='device' decodes JPEGs on a CUDA GPU.*decoding on the CPU"):
            ds = make("imagenet_lt", imagenet.root, train=True, decode="device")
        assert ds.decode == "cpu" and ds.collate_fn is None


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torchvision 0.29 deprecates its decoders
def test_device_decoding_path_on_cpu(imagenet, monkeypatch):
    """decode="device" with the GPU decoder replaced by the CPU one: items are undecoded
    bytes, the collate and decode_batch give images, and a corrupt image is replaced with
    its label (and index) following."""
    import functools

    from torchvision.io import ImageReadMode, decode_jpeg

    from dbm_ltr.data import fastjpeg, splitfile

    def cpu_decoder(data, device):
        if isinstance(data, list):
            return [decode_jpeg(d, mode=ImageReadMode.RGB) for d in data]
        return decode_jpeg(data, mode=ImageReadMode.RGB)

    monkeypatch.setattr(splitfile, "decode_batch", functools.partial(fastjpeg.decode_batch, jpeg_decoder=cpu_decoder))
    train_txt = os.path.join(imagenet.root, "ImageNet_LT_train.txt")
    bad = listed_path(imagenet.root, train_txt, 1)
    data = open(bad, "rb").read()
    open(bad, "wb").write(data[: len(data) // 2])  # the header still reads; the decode fails
    ds = make("imagenet_lt", imagenet.root, train=True, transform=build_transform("imagenet_test"), skip_corrupt=True)
    ds.decode, ds.collate_fn = "device", fastjpeg.collate_encoded  # what a CUDA machine gets
    items = [ds[i] for i in range(4)]
    assert all(isinstance(x, fastjpeg.EncodedSample) for x, _ in items)
    batch, targets = ds.collate_fn(items)
    indices = torch.arange(4)
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        images, targets2, indices2 = ds.decode_batch(batch, "cpu", targets, indices)
    assert images.shape == (4, 3, 224, 224) and ds.skipped == 1
    assert indices2.tolist() == [0, 2, 2, 3] and targets2.tolist() == [targets[i] for i in (0, 2, 2, 3)]
    assert torch.equal(images[1], images[2])  # the replacement (a deterministic test view)


def test_engine_normalises_loader_batches_on_the_device(imagenet, tmp_path):
    """The trainer builds the large-scale recipes deferred: the data sets yield uint8 images,
    and the evaluation and training batches are normalised after the move to the device,
    to exactly the values of the recipes that normalise each image."""
    from dbm_ltr.engine import Trainer, load_config
    from dbm_ltr.engine.build import transform

    cfg = load_config(
        "imagenet_lt/dbm_bs",
        [
            f"data.root={imagenet.root}",
            "data.image_size=32",
            "optim.epochs=1",
            "optim.warmup_epochs=0",
            "optim.batch_size=4",
            "data.workers=0",
            "train.progress=false",
            "data.eval_batch_size=4",
            "model.name=resnet32",
        ],
    )
    trainer = Trainer(cfg, tmp_path / "run", log=lambda m: None)
    assert trainer.pipeline.name == "loader" and trainer.pipeline.normalize is not None
    assert trainer.train_set[0][0].dtype == torch.uint8 and trainer.test_set[0][0].dtype == torch.uint8
    plain = make("imagenet_lt", imagenet.root, train=False, transform=transform(cfg, "imagenet_test"))
    images, targets = next(trainer.pipeline.eval_batches())
    assert images.dtype == torch.float32
    assert torch.equal(images, torch.stack([plain[i][0] for i in range(4)]))
    assert torch.equal(targets, torch.tensor([plain[i][1] for i in range(4)]))
    row = trainer.train_one_epoch(0, max_steps=2)
    assert np.isfinite(row["train_loss"])
