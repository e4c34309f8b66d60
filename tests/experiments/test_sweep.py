import json

import pytest
import yaml
from analysis_helpers import tiny_overrides

from dbm_ltr import cli
from dbm_ltr.engine import ConfigError
from dbm_ltr.experiments import parse_grid, plan_sweep, run_sweep, summarize_sweep
from dbm_ltr.experiments.sweep import load_finished


def _err_line(capsys):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dbm-ltr sweep: error: "), captured.err
    return lines[0]


def test_dry_run_lists_the_cartesian_product_and_trains_nothing(fake_cifar10_root, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = cli.main(
        [
            "sweep",
            "--config",
            "cifar10_lt/dbm_ce",
            "--grid",
            "max_margin=0.1,0.2,0.3",
            "tau=0.5,1,1.5",
            "--out",
            str(out),
            "--dry-run",
            "--set",
            f"data.root={fake_cifar10_root}",
            "data.imbalance_factor=10",  # the dry run loads the data: the fake set has 40 images a class
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "9 grid points of cifar10_lt/dbm_ce" in text and "dry run: nothing trained" in text
    for k in ("0.1", "0.2", "0.3"):
        for t, shown in (("0.5", "0.5"), ("1", "1.0"), ("1.5", "1.5")):
            line = next(line for line in text.splitlines() if f"max_margin={k},tau={t} " in line)
            assert str(out / f"max_margin={k},tau={t}") in line
            assert f"loss.max_margin={k} loss.tau={shown}" in line
    assert not out.exists()


@pytest.mark.parametrize(
    "grid, message",
    [
        (["max_margn=0.1,0.2"], "unknown override key 'max_margn' (did you mean 'max_margin'?)"),
        (["max_margin=0.1,abc"], "grid point max_margin=abc: loss.max_margin must be float"),
        (["max_margin=0.1,2"], "grid point max_margin=2: the largest total margin"),
        (["loss.instance_margin=hard,nne"], "unknown instance_margin 'nne'"),
        (["optim.epochs=10,0"], "grid point optim.epochs=0: optim.epochs must be > 0"),
        (["tau=1", "loss.tau=2"], "both set loss.tau"),
        (["tau=1,1"], "repeats a value"),
        (["tau"], "must look like key=v1,v2"),
    ],
)
def test_bad_keys_and_values_stop_before_training(grid, message, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert cli.main(["sweep", "--config", "cifar10_lt/dbm_ce", "--grid", *grid, "--out", str(out)]) == 2
    assert message in _err_line(capsys)
    assert not out.exists()


def test_grid_values_are_yaml_and_commas_inside_brackets_stay():
    assert parse_grid(["optim.milestones=[1,2],[3, 4]", "name='a,b',c"]) == [
        ("optim.milestones", ["[1,2]", "[3, 4]"], [[1, 2], [3, 4]]),
        ("name", ["'a,b'", "c"], ["a,b", "c"]),
    ]
    with pytest.raises(ConfigError, match="twice"):
        parse_grid(["tau=1", "tau=2"])


def _fake_finished(point, top1):
    """Mark a planned point as finished without training: its config and a metrics.json."""
    point.run_dir.mkdir(parents=True)
    (point.run_dir / "config.yaml").write_text(yaml.safe_dump(point.config.to_dict(), sort_keys=False))
    (point.run_dir / "metrics.json").write_text(
        json.dumps(
            {
                "top1": top1,
                "many": None,
                "medium": top1,
                "few": top1,
                "preset": point.config.name,
                "imbalance_factor": point.config.data.imbalance_factor,
                "paper": {"top1": 80.84, "source": "t"},
            }
        )
    )


def test_finished_points_are_skipped_and_a_2d_grid_gets_a_heat_map(tmp_path, capsys):
    out = tmp_path / "sweep"
    grid = ["max_margin=0.1,0.2", "tau=0.5,1"]
    axes, points = plan_sweep("cifar10_lt/dbm_ce", grid, [], out)
    assert [a.path for a in axes] == ["loss.max_margin", "loss.tau"]
    assert [p.name for p in points] == [
        "max_margin=0.1,tau=0.5",
        "max_margin=0.1,tau=1",
        "max_margin=0.2,tau=0.5",
        "max_margin=0.2,tau=1",
    ]
    for k, p in enumerate(points):
        _fake_finished(p, 70.0 + k)
    axes, points = plan_sweep("cifar10_lt/dbm_ce", grid, [], out)
    assert {p.status for p in points} == {"done"}
    logged = []
    run_sweep(points, log=logged.append)  # nothing to train: would fail without data otherwise
    assert all("skipped" in line for line in logged)
    summary = summarize_sweep(axes, points, out)
    assert summary["plot"] == out / "sweep_top1.png" and summary["plot"].stat().st_size > 0
    report = summary["report"].read_text()
    assert "loss.max_margin=0.2, loss.tau=1.0" in report and "| 73.00 | 80.84 | -7.84 |" in report
    assert summary["csv"].is_file()


def test_the_plot_takes_the_mean_over_seeds(tmp_path, monkeypatch):
    """With a train.seed axis, each cell of the plot is the mean top-1 of its seeds; a cell
    with seeds still missing is n/a, not a mean over fewer."""
    from dbm_ltr.experiments import sweep

    out = tmp_path / "sweep"
    grid = ["max_margin=0.1,0.2", "train.seed=0,1,2"]
    axes, points = plan_sweep("cifar10_lt/dbm_ce", grid, [], out)
    scores = {("0.1", "0"): 70.0, ("0.1", "1"): 72.0, ("0.1", "2"): 77.0, ("0.2", "0"): 60.0}
    for p in points:
        if tuple(p.raw) in scores:  # seeds 1 and 2 of max_margin=0.2 have not finished
            _fake_finished(p, scores[tuple(p.raw)])
    axes, points = plan_sweep("cifar10_lt/dbm_ce", grid, [], out)
    load_finished(points)
    drawn = {}
    monkeypatch.setattr(sweep, "plot_sweep", lambda keys, values, top1, path, title: drawn.update(top1=top1, t=title))
    summarize_sweep(axes, points, out)
    assert drawn["top1"] == {("0.1",): pytest.approx(73.0), ("0.2",): None}
    assert "mean over 3 seeds" in drawn["t"]


def test_a_failing_point_is_reported_and_the_others_train(fake_cifar10_root, tmp_path, capsys):
    """A point whose checkpoint cannot be read fails alone: the other trains, the report has
    it, and the command ends with 1 and names the failed point and why."""
    out = tmp_path / "sweep"
    broken = out / "max_margin=0.1"
    broken.mkdir(parents=True)
    (broken / "checkpoint.pt").write_bytes(b"damaged")
    args = ["sweep", "--config", "cifar10_lt/dbm_ce", "--grid", "max_margin=0.1,0.2", "--out", str(out)]
    assert cli.main([*args, "--set", *tiny_overrides(fake_cifar10_root, epochs=1)]) == 1
    captured = capsys.readouterr()
    assert (out / "max_margin=0.2" / "metrics.json").is_file() and not (broken / "metrics.json").exists()
    rows = [line for line in (out / "sweep_report.md").read_text().splitlines() if line.startswith("| cifar10_lt/")]
    assert len(rows) == 1  # the finished point alone
    assert "1 grid point(s) did not finish: max_margin=0.1 (" in captured.err and "checkpoint" in captured.err
    assert "[1/2] max_margin=0.1: failed:" in captured.out


def test_an_existing_run_with_other_settings_is_an_error(tmp_path):
    out = tmp_path / "sweep"
    _, points = plan_sweep("cifar10_lt/dbm_ce", ["tau=1"], [], out)
    _fake_finished(points[0], 70.0)
    with pytest.raises(ConfigError, match="holds a run with other settings .*optim.epochs"):
        plan_sweep("cifar10_lt/dbm_ce", ["tau=1"], ["optim.epochs=30"], out)


def test_tiny_real_sweep_trains_reports_and_resumes(fake_cifar10_root, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = [
        "sweep",
        "--config",
        "cifar10_lt/dbm_ce",
        "--grid",
        "max_margin=0.1,0.2",
        "--out",
        str(out),
        "--set",
        *tiny_overrides(fake_cifar10_root),
    ]
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    for k in ("0.1", "0.2"):
        run = out / f"max_margin={k}"
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["epoch"] == 1 and metrics["preset"] == "cifar10_lt/dbm_ce"
        assert yaml.safe_load((run / "config.yaml").read_text())["loss"]["max_margin"] == float(k)
        assert f"loss.max_margin={k}" in text  # report rows tell the points apart
    assert (out / "sweep_report.md").is_file() and (out / "sweep_report.csv").is_file()
    assert (out / "sweep_top1.png").is_file() and f"plot: {out / 'sweep_top1.png'}" in text

    # rerun: the finished point is skipped, the one without metrics.json is resumed (no epochs left)
    (out / "max_margin=0.2" / "metrics.json").unlink()
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "(finished, skipped)" in text and "(resume after epoch 1)" in text
    assert "[1/2] max_margin=0.1: finished earlier, skipped" in text
    assert (out / "max_margin=0.2" / "metrics.json").is_file()
