"""The ImageNet-LT and iNaturalist 2018 presets: recipes and the paper's numbers."""

import pytest

from dbm_ltr.engine import load_config
from dbm_ltr.engine.config import preset_dir
from dbm_ltr.engine.schedules import learning_rate

ROWS = ["ce", "bs", "dbm_ce", "dbm_bs", "bcl", "dbm_bcl"]
IMAGENET = ROWS + [f"{r}_resnext50" for r in ROWS] + ["gml_teacher", "gml", "dbm_gml"]
PRESETS = [f"imagenet_lt/{r}" for r in IMAGENET] + [f"inat2018/{r}" for r in ROWS]


def test_every_preset_exists():
    found = {
        str(p.relative_to(preset_dir()).with_suffix(""))
        for d in ("imagenet_lt", "inat2018")
        for p in (preset_dir() / d).glob("*.yaml")
    }
    assert found == set(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_fully_validated(preset):
    cfg = load_config(preset)
    assert cfg.name == preset
    assert learning_rate(0, 1.0, cfg.optim.epochs, cfg.optim.schedule, cfg.optim.warmup_epochs) > 0.99


@pytest.mark.parametrize("preset", PRESETS)
def test_recipes(preset):
    cfg = load_config(preset)
    o, m, loss = cfg.optim, cfg.model, cfg.loss
    data, row = preset.split("/")
    # the BCL / DBM code's shifted cosine; GML: the GML code's cosine, (e + 1) / (E + 1)
    assert (o.momentum, o.schedule) == (0.9, "cosine" if "gml" in row else "cosine_shifted")
    if row.startswith(("gml", "dbm_gml")):
        assert (o.batch_size, o.lr, o.epochs, o.weight_decay, o.warmup_epochs) == (128, 0.05, 90, 5e-4, 0)
        assert m.classifier == "cosine" and loss.params["scale"] == 30.0
        return
    if data == "imagenet_lt":
        assert cfg.data.name == "imagenet_lt"
        assert (o.batch_size, o.lr, o.epochs, o.weight_decay, o.warmup_epochs) == (256, 0.1, 90, 5e-4, 4)
        assert m.name == ("resnext50" if row.endswith("_resnext50") else "resnet50")
    else:
        assert cfg.data.name == "inat2018" and m.name == "resnet50"
        assert (o.batch_size, o.lr, o.epochs, o.weight_decay, o.warmup_epochs) == (256, 0.2, 100, 1e-4, 4)
    base = row.replace("_resnext50", "")
    if base in ("ce", "bs"):
        assert m.classifier == "linear" and loss.name == base and cfg.method.name == "standard"
        return
    assert m.classifier == "cosine" and loss.name == "dbm" and loss.params["scale"] == 30.0
    dbm = base.startswith("dbm")
    assert loss.params["max_margin"] == (0.1 if dbm else 0.0)
    if dbm:
        assert loss.params["tau"] == 1.0
    assert loss.params["base"] == ("ce" if base == "dbm_ce" else "bs")
    if base.endswith("bcl"):
        prefix = "imagenet" if data == "imagenet_lt" else "inat"
        assert cfg.method.name == "bcl" and cfg.data.augment == f"{prefix}_randaug"
        p = cfg.method.params
        assert (p["alpha"], p["beta"], p["temperature"], p["hidden_dim"], p["proj_dim"]) == (2.0, 0.6, 0.1, 2048, 1024)


def test_gml_presets():
    teacher, gml, dbm_gml = (load_config(f"imagenet_lt/{r}") for r in ("gml_teacher", "gml", "dbm_gml"))
    assert teacher.model.name == "resnext101" and teacher.method.name == "standard"
    assert teacher.loss.params["max_margin"] == 0.0 and teacher.loss.params["base"] == "bs"
    for cfg in (gml, dbm_gml):
        p = cfg.method.params
        assert cfg.model.name == "resnext50" and p["teacher_trunk"] == "resnext101"
        assert (p["queue_size"], p["base_k"], p["embed_dim"], p["temperature"], p["alpha"]) == (
            16384,
            3,
            1024,
            0.07,
            0.0,
        )
    assert gml.loss.params["max_margin"] == 0.0 and dbm_gml.loss.params["max_margin"] == 0.1
    # the GML code's views (randcls_randclsstack), SyncBatchNorm and loader; its teacher's view
    for cfg in (gml, dbm_gml):
        assert cfg.data.augment_views == ["imagenet_randaug", "imagenet_randaug_stack", "imagenet_randaug_stack"]
    assert teacher.data.augment == "imagenet_randaug" and not teacher.data.augment_views
    assert all(c.train.sync_bn and c.train.drop_last for c in (teacher, gml, dbm_gml))


PAPER = {
    "imagenet_lt/ce": 41.6,
    "imagenet_lt/bs": 50.9,
    "imagenet_lt/bcl": 56.0,
    "imagenet_lt/dbm_bcl": 56.3,
    "imagenet_lt/ce_resnext50": 44.4,
    "imagenet_lt/bcl_resnext50": 56.7,
    "imagenet_lt/dbm_bcl_resnext50": 57.4,
    "imagenet_lt/gml": 58.3,
    "imagenet_lt/dbm_gml": 58.6,
    "inat2018/ce": 61.0,
    "inat2018/bs": 67.2,
    "inat2018/bcl": 71.0,
    "inat2018/dbm_bcl": 71.9,
}
GROUPS = {
    "inat2018/ce": (73.9, 63.5, 55.5),
    "inat2018/bs": (65.5, 67.5, 67.5),
    "inat2018/bcl": (68.2, 71.3, 71.3),
    "inat2018/dbm_bcl": (65.6, 71.8, 71.5),
}


@pytest.mark.parametrize("preset", PRESETS)
def test_paper_numbers(preset):
    paper = load_config(preset).paper
    assert paper.get("top1") == PAPER.get(preset)  # a plain number: no imbalance factor to key by
    if preset in GROUPS:
        g = paper["groups"]
        assert (g["many"], g["medium"], g["few"]) == GROUPS[preset]
    else:
        assert "groups" not in paper
    if preset in PAPER:
        assert "Table 3" in paper["source"] if preset.startswith("imagenet") else "Table 4" in paper["source"]
