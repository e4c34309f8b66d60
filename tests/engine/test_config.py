import pytest

from dbm_ltr.engine import ConfigError, load_config
from dbm_ltr.engine.config import preset_dir

PRESETS = sorted(str(p.relative_to(preset_dir()).with_suffix("")) for p in preset_dir().rglob("*.yaml"))
TABLE2 = ["ce", "ldam", "dbm_ce", "ce_drw", "ldam_drw", "dbm_drw", "bs", "dbm_bs"]


def test_every_table2_row_has_a_preset_with_paper_numbers():
    for data in ("cifar10_lt", "cifar100_lt"):
        for row in TABLE2:
            cfg = load_config(f"{data}/{row}")
            assert cfg.data.name == data and cfg.name == f"{data}/{row}"
            assert set(cfg.paper["top1"]) == {100, 50, 10}
            if data == "cifar100_lt":
                assert set(cfg.paper["groups"][100]) == {"many", "medium", "few"}


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_resolve_to_full_configs(preset):
    cfg = load_config(preset).to_dict()
    assert cfg["optim"]["lr"] > 0
    if cfg["loss"]["name"] == "dbm":
        assert cfg["model"]["classifier"] == "cosine"
        assert {"max_margin", "tau", "scale", "lambda_inst", "instance_margin"} <= set(cfg["loss"])


def test_dbm_preset_recipe_matches_spec():
    cfg = load_config("cifar100_lt/dbm_bs")
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.1, 0.9, 2e-4)
    assert (cfg.optim.batch_size, cfg.optim.epochs, cfg.optim.warmup_epochs) == (64, 200, 5)
    assert cfg.loss.params["base"] == "bs" and cfg.loss.params["max_margin"] == 0.1
    assert cfg.loss.params["scale"] == 32.0 and cfg.paper["top1"][100] == 51.30


def test_overrides_dotted_bare_and_yaml_values():
    cfg = load_config(
        "cifar10_lt/dbm_ce",
        [
            "data.imbalance_factor=50",
            "max_margin=0.2",
            "optim.milestones=[100, 150]",
            "train.amp=true",
            "optim.weight_decay=5e-4",
        ],
    )
    assert cfg.data.imbalance_factor == 50.0 and cfg.loss.params["max_margin"] == 0.2
    assert cfg.optim.milestones == [100, 150] and cfg.train.amp is True
    assert cfg.optim.weight_decay == 5e-4  # "5e-4" is a string to YAML 1.1; accepted as a number
    cfg = load_config("cifar10_lt/dbm_ce", ["tau=0.5"])  # default filled in from the loss
    assert cfg.loss.params["tau"] == 0.5


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["optim.lrr=0.1"], r"unknown config key optim.lrr \(did you mean 'lr'\?\)"),
        (["loss.max_margn=0.1"], r"unknown config key loss.max_margn \(did you mean 'max_margin'\?\).*accepts"),
        (["optimizer.lr=0.1"], r"unknown config section 'optimizer' \(did you mean 'optim'\?\)"),
        (["optim.epochs=ten"], r"optim.epochs must be int, got 'ten'"),
        (["train.amp=maybe"], r"train.amp must be bool"),
        (["loss.name=focal"], r"loss.name: unknown loss 'focal'"),
        (["method.name=mixup"], r"method.name: unknown method 'mixup'"),
        (["method.queue_size=64"], r"unknown config key method.queue_size: method 'standard' accepts no parameters"),
        (["epoch=3"], r"unknown override key 'epoch' \(did you mean 'epochs'\?\)"),
        (["seed=3"], r"ambiguous: write one of data.seed, train.seed"),
        (["optim.epochs"], r"must look like key=value"),
        (["optim.warmup_epochs=-1"], r"warmup_epochs must be >= 0"),
        (["data.imbalance_factor=0.5"], r"imbalance_factor must be >= 1"),
        (["model.classifier=norm"], r"model.classifier must be linear or cosine"),
        (["optim.momentum=-0.5"], r"optim.momentum must be >= 0, got -0.5"),
        (["optim.nesterov=true", "optim.momentum=0"], r"optim.nesterov=true needs momentum"),
        (["optim.lr_decay=0"], r"optim.lr_decay must be > 0"),
        (["optim.milestones=[a]"], r"optim.milestones must be a list of epochs .* got \['a'\]"),
        (["optim.milestones=[160.5]"], r"optim.milestones must be a list of epochs"),
        (["train.device=gpu"], r"train.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
        (["data.name=cifar10"], r"data.name: unknown 'cifar10' \(did you mean 'cifar10_lt'\?\)"),
        (["model.name=resnet34"], r"model.name: unknown 'resnet34'.*valid: .*resnet32"),
        (["data.augment=autoaugment"], r"data.augment: unknown 'autoaugment'"),
    ],
)
def test_bad_configs_get_clear_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config("cifar10_lt/dbm_ce", overrides)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="neither a file nor a preset; did you mean cifar10_lt/dbm_ce"):
        load_config("cifar10_lt/dbm_cee")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: [0.1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(bad)
    bad.write_text("loss: {base: ce}\n")
    with pytest.raises(ConfigError, match="loss must be a mapping with a 'name'"):
        load_config(bad)


@pytest.mark.parametrize("data", ["cifar10_lt", "cifar100_lt"])
def test_ncl_presets_paper_and_code_variants(data):
    """Paper presets keep what the paper states (cosine schedule, s = 32); the *_code presets
    carry the original code's values. Both use the code's effective key momentum: each key
    encoder is updated once per expert per step, 0.999 three times = 0.999^3."""
    for row in ("ncl", "dbm_ncl"):
        paper, code = load_config(f"{data}/{row}"), load_config(f"{data}/{row}_code")
        for cfg in (paper, code):
            assert cfg.method.params["moco_momentum"] == pytest.approx(0.999**3, abs=1e-15)
            assert cfg.method.params["num_experts"] == 3 and cfg.optim.epochs == 400
            assert cfg.train.drop_last and cfg.train.eval_every == 10
            assert cfg.paper == paper.paper
        assert paper.optim.schedule == "cosine"
        assert (paper.method.params["key_init"], paper.method.params["key_head"]) == ("copy", "ema")
        assert (code.optim.schedule, code.optim.milestones, code.optim.lr_decay) == ("step", [320, 360], 0.01)
        assert (code.method.params["key_init"], code.method.params["key_head"]) == ("random", "frozen")
        assert (paper.method.params["momentum_update"], code.method.params["momentum_update"]) == (
            "before_keys",  # MoCo's order
            "after_keys",  # the NCL code's
        )
        if row == "dbm_ncl":
            assert paper.loss.params["scale"] == 32.0 and code.loss.params["scale"] == 16.0
        a, b = paper.to_dict(), code.to_dict()
        differ = {f"{s}.{k}" for s in ("optim", "method", "loss") for k in a[s] if a[s][k] != b[s][k]}
        assert differ == {"optim.schedule", "optim.milestones", "method.key_init", "method.key_head"} | {
            "method.momentum_update"
        } | ({"loss.scale"} if row == "dbm_ncl" else set())


def test_table2_presets_track_the_best_test_epoch():
    for preset in PRESETS:
        if preset.startswith(("cifar", "ablation")):
            assert load_config(preset).train.eval_every == 10, preset


@pytest.mark.parametrize("row", ["ldam", "ldam_drw"])
@pytest.mark.parametrize("data", ["cifar10_lt", "cifar100_lt"])
def test_ldam_presets_state_which_margin_and_why(data, row):
    """M = 0.5 of the LDAM paper; the DBM code's effective 0.1 is the *_code preset."""
    from dbm_ltr.engine.config import resolve_config_path

    assert load_config(f"{data}/{row}").loss.params["max_margin"] == 0.5
    text = resolve_config_path(f"{data}/{row}").read_text()
    assert "M = 0.5, the LDAM paper's" in text and f"{data}/{row}_code" in text
    code = load_config(f"{data}/{row}_code")
    assert code.loss.params["max_margin"] == 0.1
    a, b = load_config(f"{data}/{row}").to_dict(), code.to_dict()
    assert {k for k in a["loss"] if a["loss"][k] != b["loss"][k]} == {"max_margin"}
    assert (a["optim"], a["data"], a["paper"]) == (b["optim"], b["data"], b["paper"])


def test_presets_from_the_dbm_code_use_its_learning_rate_and_autoaugment():
    """The rows whose recipe is the DBM code's cifar/ folder use its cosine, (t - 4) / 195; NCL
    (the paper's cosine over 400 epochs, or the code's steps) and GML (the GML code's steps,
    with its long warm-up; at ImageNet scale its cosine without warm-up) keep theirs; every
    CIFAR preset uses the DBM code's AutoAugment policy; GML teachers drop the last batch, as
    the GML code's loader."""
    for preset in PRESETS:
        cfg = load_config(preset)
        row = preset.split("/")[-1]
        if "gml" in row:
            assert cfg.train.drop_last, preset
        if not preset.startswith(("cifar", "ablation")):
            assert cfg.optim.schedule != "cosine_reference", preset
            if "gml" in row:
                assert (cfg.optim.schedule, cfg.optim.warmup_epochs) == ("cosine", 0), preset
            continue
        assert cfg.data.autoaugment == "reference", preset
        if "ncl" in row:
            assert cfg.optim.schedule == ("step" if row.endswith("_code") else "cosine"), preset
        elif "gml" in row:
            assert cfg.optim.schedule == "step_gml", preset
        else:
            assert cfg.optim.schedule == "cosine_reference", preset


def test_autoaugment_setting():
    assert load_config("cifar10_lt/ce").data.autoaugment == "reference"
    assert load_config("cifar10_lt/ce", ["data.autoaugment=torchvision"]).data.autoaugment == "torchvision"
    with pytest.raises(ConfigError, match="data.autoaugment must be one of reference, torchvision, got 'tv'"):
        load_config("cifar10_lt/ce", ["data.autoaugment=tv"])


def test_a_yaml_syntax_error_is_one_line_with_file_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: {name: cifar10_lt}\noptim: {milestones: [}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: not valid YAML (line 2, column 22: ")


def test_a_setting_added_later_equals_its_default_when_comparing_runs():
    from dbm_ltr.engine.rundir import config_differences

    now = load_config("cifar10_lt/ce").to_dict()
    older = {**now, "data": {k: v for k, v in now["data"].items() if k != "limit"}}
    assert config_differences(older, now) == []
    changed = {**now, "data": {**now["data"], "limit": 50}}
    assert config_differences(older, changed) == [("data.limit", 0, 50)]


def test_a_run_saved_before_autoaugment_existed_trained_with_torchvisions_policy():
    from dbm_ltr.engine.config import saved_config
    from dbm_ltr.engine.rundir import config_differences, recipe_revisions

    now = load_config("cifar10_lt/ce").to_dict()
    older = {
        **now,
        "data": {k: v for k, v in now["data"].items() if k != "autoaugment"},
        "optim": {**now["optim"], "schedule": "cosine"},
    }
    upgraded = saved_config(older)
    assert upgraded["data"]["autoaugment"] == "torchvision" and "autoaugment" not in older["data"]
    assert saved_config(now) == now and saved_config(None) is None
    tv = load_config("cifar10_lt/ce", ["data.autoaugment=torchvision", "optim.schedule=cosine"]).to_dict()
    assert config_differences(older, tv) == [] and recipe_revisions(older, tv) == []
    # against the revised preset: not refused, two revisions that the run keeps
    assert config_differences(older, now) == []
    assert recipe_revisions(older, now) == [
        ("optim.schedule", "cosine", "cosine_reference"),
        ("data.autoaugment", "torchvision", "reference"),
    ]
    # other changes are refused as before, and a revision backwards is a change
    changed = {**now, "optim": {**now["optim"], "lr": 0.2}}
    assert config_differences(older, changed) == [("optim.lr", 0.1, 0.2)]
    assert config_differences(now, tv) == [
        ("data.autoaugment", "reference", "torchvision"),
        ("optim.schedule", "cosine_reference", "cosine"),
    ]


def test_gml_runs_saved_before_the_gml_codes_schedule_and_loader_keep_their_own():
    """The GML presets took the GML code's warm-up (step_gml), its ImageNet cosine, views and
    SyncBatchNorm and (teachers) its drop_last: a run saved before resumes from the revised
    preset with its own values."""
    from dbm_ltr.engine.rundir import config_differences, recipe_revisions

    for preset, schedule in (
        ("cifar100_lt/gml_teacher", "step"),
        ("imagenet_lt/gml_teacher", "cosine_shifted"),
        ("imagenet_lt/gml", "cosine_shifted"),
    ):
        now = load_config(preset).to_dict()
        older = {**now, "optim": {**now["optim"], "schedule": schedule}, "train": {**now["train"], "drop_last": False}}
        want = [("optim.schedule", schedule, now["optim"]["schedule"])]
        if preset.startswith("imagenet"):
            older["data"] = {**now["data"], "augment": "", "augment_views": []}
            older["train"]["sync_bn"] = False
            if preset.endswith("teacher"):
                want.append(("data.augment", "", "imagenet_randaug"))
            else:
                want.append(("data.augment_views", [], now["data"]["augment_views"]))
            want.append(("train.sync_bn", False, True))
        want.append(("train.drop_last", False, True))
        assert config_differences(older, now) == []
        assert sorted(recipe_revisions(older, now)) == sorted(want)
        assert config_differences(now, older)  # backwards is a change, refused
