from pathlib import Path

import pytest
import yaml

from dbm_ltr.data import long_tail_counts
from dbm_ltr.engine import build_method, load_config
from dbm_ltr.engine.config import preset_dir
from dbm_ltr.engine.evaluation import paper_reference

# Table 5 of the paper (CIFAR-100-LT IF 100, top-1 %): row -> (CE, BS)
TABLE5 = {
    "linear": (44.60, 49.35),
    "cosine": (44.29, 49.84),
    "class_margin": (45.85, 50.61),
    "instance_all": (46.38, 50.93),
    "instance_hard": (46.53, 51.30),
}
# row -> (classifier, loss name, max_margin, instance_margin) of the CE/BS ablation
VARIANT = {
    "linear": ("linear", None, None, None),
    "cosine": ("cosine", "dbm", 0.0, None),
    "class_margin": ("cosine", "dbm", 0.1, "none"),
    "instance_all": ("cosine", "dbm", 0.1, "all"),
    "instance_hard": ("cosine", "dbm", 0.1, "hard"),
}


def test_there_are_ten_ablation_presets():
    names = sorted(p.stem for p in (preset_dir() / "ablation").glob("*.yaml"))
    assert names == sorted(f"{b}_{row}" for b in ("ce", "bs") for row in TABLE5)


@pytest.mark.parametrize("base", ["ce", "bs"])
@pytest.mark.parametrize("row", list(TABLE5))
def test_preset_loads_builds_and_carries_table5(base, row):
    config = load_config(f"ablation/{base}_{row}")
    assert config.name == f"ablation/{base}_{row}"
    classifier, loss, margin, instance = VARIANT[row]
    assert config.model.classifier == classifier
    if loss is None:
        assert config.loss.name == base
    else:
        assert config.loss.name == loss and config.loss.params["base"] == base
        assert config.loss.params["max_margin"] == margin
        if instance is not None:
            assert config.loss.params["instance_margin"] == instance
    assert paper_reference(config)["top1"] == TABLE5[row][0 if base == "ce" else 1]
    # same recipe as the Table 2 presets
    table2 = load_config(f"cifar100_lt/{base}")
    assert config.optim == table2.optim and config.data == table2.data and config.train == table2.train
    build_method(config, long_tail_counts(500, 100, 100), 100)  # head and loss fit together


def test_paper_block_has_the_table2_format():
    for path in (preset_dir() / "ablation").glob("*.yaml"):
        paper = yaml.safe_load(Path(path).read_text())["paper"]
        assert set(paper) == {"source", "top1"} and list(paper["top1"]) == [100]
        assert "Table 5" in paper["source"]
