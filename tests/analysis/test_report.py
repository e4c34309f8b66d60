import csv
import math
import statistics

import pytest
from analysis_helpers import write_run

from dbm_ltr import cli
from dbm_ltr.analysis import RunError, report_markdown, summarize_runs
from dbm_ltr.analysis.report import expand_run_dirs, paired_differences, t_quantile

DBM_BS_PAPER = {"top1": 51.3, "many": 67.29, "medium": 50.8, "few": 33.23, "source": "Table 2"}
BS_PAPER = {"top1": 49.35, "many": 65.77, "medium": 50.14, "few": 29.27, "source": "Table 2"}


@pytest.fixture
def runs(tmp_path):
    """Two seeds of DBM-BS and one of BS on CIFAR-100-LT IF 100, written by hand."""
    return [
        write_run(tmp_path / "dbm_bs_s0", "cifar100_lt/dbm_bs", 0, 50.0, 66.0, 50.0, 30.0, paper=DBM_BS_PAPER),
        write_run(tmp_path / "bs_s0", "cifar100_lt/bs", 0, 48.0, 65.0, 49.0, 27.5, paper=BS_PAPER),
        write_run(tmp_path / "dbm_bs_s1", "cifar100_lt/dbm_bs", 1, 52.0, 68.0, 51.0, 34.0, paper=DBM_BS_PAPER),
    ]


def test_seeds_are_averaged_beside_the_paper(runs):
    rows = summarize_runs(runs)
    assert [(r.preset, r.imbalance_factor, r.n) for r in rows] == [
        ("cifar100_lt/dbm_bs", 100.0, 2),
        ("cifar100_lt/bs", 100.0, 1),
    ]
    dbm, bs = rows
    assert dbm.seeds == [0, 1] and dbm.settings == ""
    assert dbm.mean("top1") == pytest.approx(51.0)
    assert dbm.std("top1") == pytest.approx(statistics.stdev([50.0, 52.0]))  # sample std, 1.414
    assert dbm.mean("few") == pytest.approx(32.0) and dbm.std("few") == pytest.approx(2**1.5)
    assert dbm.paper["top1"] == 51.3 and dbm.diff("top1") == pytest.approx(-0.3)
    assert dbm.diff("many") == pytest.approx(67.0 - 67.29)
    assert bs.std("top1") is None and bs.diff("top1") == pytest.approx(48.0 - 49.35)

    text = report_markdown(rows)
    assert "final-epoch" in text and "final epoch" in text.splitlines()[2]  # header says so
    assert "| cifar100_lt/dbm_bs | 100 | 2 | 200 | 51.00 +- 1.41 | 51.30 | -0.30 |" in text
    assert "| cifar100_lt/bs | 100 | 1 | 200 | 48.00 | 49.35 | -1.35 |" in text
    assert "best epoch*" not in text and "short" not in text  # no run tracked a best epoch, none is short


def test_cli_writes_markdown_and_csv(runs, tmp_path, capsys):
    out = tmp_path / "out" / "report.md"
    assert cli.main(["report", *map(str, runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "51.00 +- 1.41" in printed and out.read_text() in printed
    rows = list(csv.DictReader(open(out.with_suffix(".csv"))))
    assert [r["preset"] for r in rows] == ["cifar100_lt/dbm_bs", "cifar100_lt/bs"]
    first = rows[0]
    assert first["n"] == "2" and first["seeds"] == "0;1"
    assert float(first["top1_mean"]) == pytest.approx(51.0)
    assert float(first["top1_std"]) == pytest.approx(2**0.5)
    assert float(first["top1_paper"]) == 51.3 and float(first["top1_diff"]) == pytest.approx(-0.3)
    assert rows[1]["top1_std"] == ""


def test_other_settings_and_imbalance_factors_stay_apart(runs, tmp_path):
    other = [
        write_run(tmp_path / "k02", "cifar100_lt/dbm_bs", 0, 49.0, loss={"max_margin": 0.2}, paper=DBM_BS_PAPER),
        write_run(
            tmp_path / "if10",
            "cifar100_lt/dbm_bs",
            0,
            65.0,
            imbalance_factor=10,
            paper={"top1": 65.22, "source": "Table 2"},
        ),
    ]
    rows = summarize_runs(runs + other)
    assert [(r.preset, r.imbalance_factor, r.settings, r.n) for r in rows] == [
        ("cifar100_lt/dbm_bs", 100.0, "loss.max_margin=0.1", 2),
        ("cifar100_lt/bs", 100.0, "", 1),
        ("cifar100_lt/dbm_bs", 100.0, "loss.max_margin=0.2", 1),
        ("cifar100_lt/dbm_bs", 10.0, "", 1),
    ]
    assert rows[3].diff("top1") == pytest.approx(65.0 - 65.22) and rows[3].diff("many") is None
    assert "| settings |" in report_markdown(rows)


def test_unfinished_runs_and_other_folders_are_skipped_with_a_line(runs, tmp_path, capsys):
    unfinished = write_run(tmp_path / "unfinished", "cifar100_lt/bs", 2, None, metrics=False)
    with pytest.raises(RunError, match="unfinished has no metrics.json"):
        summarize_runs(runs + [unfinished])  # the library call without a skip list: an error
    compare = tmp_path / "compare"  # an analysis folder, as the README's sequence writes it
    compare.mkdir()
    (compare / "analysis.md").write_text("# analysis\n")
    assert cli.main(["report", *map(str, runs), str(unfinished), str(compare)]) == 0
    captured = capsys.readouterr()
    assert "| cifar100_lt/dbm_bs | 100 | 2 |" in captured.out  # the finished runs are reported
    err = captured.err.strip().splitlines()
    assert len(err) == 2
    assert err[0].startswith("dbm-ltr report: skipped ") and "unfinished has no metrics.json" in err[0]
    assert "compare is not a run directory" in err[1]


def test_missing_and_foreign_folders(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "gone")]) == 2
    err = capsys.readouterr().err
    assert "no finished run among the folders given" in err and "no such run directory" in err
    (tmp_path / "empty").mkdir()
    assert cli.main(["report", str(tmp_path / "empty")]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def test_a_folder_of_runs_stands_for_its_runs(runs, tmp_path):
    expanded = expand_run_dirs([tmp_path])
    assert sorted(expanded) == sorted(runs)
    assert expand_run_dirs([runs[0]]) == [runs[0]]
    # a run named twice (in its folder and on its own, or by another path) counts once
    again = tmp_path / ".." / tmp_path.name / runs[0].name
    assert sorted(expand_run_dirs([tmp_path, runs[0], again])) == sorted(runs)


def test_best_test_epoch_is_shown_beside_the_final_one_and_marked(tmp_path):
    """Runs with train.eval_every carry their best test epoch: the report shows it next to the
    final epoch, marked as test-set selection, with its own difference to the paper."""
    best = {"top1": 52.0, "many": 67.0, "medium": 51.0, "few": 33.0}
    runs = [
        write_run(tmp_path / "s0", "cifar100_lt/dbm_bs", 0, 50.0, 66.0, 50.0, 30.0, paper=DBM_BS_PAPER, best=best),
        write_run(
            tmp_path / "s1",
            "cifar100_lt/dbm_bs",
            1,
            51.0,
            66.0,
            50.0,
            31.0,
            paper=DBM_BS_PAPER,
            best={**best, "top1": 53.0},
        ),
        write_run(tmp_path / "bs", "cifar100_lt/bs", 0, 48.0, 65.0, 49.0, 27.5, paper=BS_PAPER),
    ]
    rows = summarize_runs(runs)
    dbm, bs = rows
    assert dbm.mean("top1") == pytest.approx(50.5) and dbm.mean("top1", best=True) == pytest.approx(52.5)
    assert dbm.diff("top1", best=True) == pytest.approx(52.5 - 51.3)
    assert dbm.std("few", best=True) == 0.0 and bs.mean("top1", best=True) is None
    text = report_markdown(rows)
    header = next(line for line in text.splitlines() if line.startswith("| preset"))
    assert "| top-1 ours (final epoch) | top-1 best epoch* | top-1 paper | top-1 diff | top-1 diff best* |" in header
    assert "| cifar100_lt/dbm_bs | 100 | 2 | 200 | 50.50 +- 0.71 | 52.50 +- 0.71 | 51.30 | -0.80 | +1.20 |" in text
    assert "| cifar100_lt/bs | 100 | 1 | 200 | 48.00 | - | 49.35 | -1.35 | - |" in text
    assert "test-set model selection" in text
    assert "(every `train.eval_every` epochs: here 10)" in text  # the presets' frequency
    assert "keeps the presets' every 10 epochs on a CPU" in text
    out = tmp_path / "report.md"
    cli.main(["report", *map(str, runs), "--out", str(out)])
    first = next(csv.DictReader(open(out.with_suffix(".csv"))))
    assert float(first["top1_best_mean"]) == pytest.approx(52.5)
    assert float(first["top1_best_diff"]) == pytest.approx(1.2) and first["recipe_epochs"] == "200"


def test_runs_evaluated_every_epoch_group_with_the_others_and_say_so(tmp_path):
    """The evaluation frequency does not split a group (it does not change training); the note
    names the frequencies, and says nothing about the CPU's every 10 where all were 1."""
    best = {"top1": 52.0, "many": 67.0, "medium": 51.0, "few": 33.0}
    gpu = write_run(tmp_path / "g", "cifar100_lt/dbm_bs", 0, 50.0, paper=DBM_BS_PAPER, best=best, eval_every=1)
    cpu = write_run(tmp_path / "c", "cifar100_lt/dbm_bs", 1, 51.0, paper=DBM_BS_PAPER, best=best)
    (row,) = summarize_runs([gpu, cpu])
    assert row.n == 2 and row.eval_every == [1, 10]
    assert "(every `train.eval_every` epochs: here 1 or 10)" in report_markdown([row])
    only_gpu = report_markdown(summarize_runs([gpu]))
    assert "here 1)" in only_gpu and "on a CPU" not in only_gpu


def test_short_runs_are_marked(tmp_path):
    runs = [
        write_run(tmp_path / "short", "cifar100_lt/dbm_bs", 0, 20.0, paper=DBM_BS_PAPER, epoch=1),
        write_run(tmp_path / "full", "cifar100_lt/bs", 0, 48.0, paper=BS_PAPER),
    ]
    short, full = summarize_runs(runs)
    assert short.short and not full.short
    text = report_markdown([short, full])
    assert "| cifar100_lt/dbm_bs | 100 | 1 | 1 (short; recipe 200) |" in text
    assert "| cifar100_lt/bs | 100 | 1 | 200 |" in text and "not comparable" in text


def test_columns_without_a_value_in_any_row_are_left_out_and_named(tmp_path):
    """CIFAR-10-LT runs have no Few classes, and the paper gives Many / Medium / Few for
    CIFAR-100-LT IF 100 only: those columns would be '-' in every row. The markdown leaves them
    out and names them; the CSV keeps them."""
    paper = {"top1": 84.6, "source": "Table 2"}
    runs = [
        write_run(tmp_path / "a", "cifar10_lt/dbm_bs", 0, 79.58, 81.18, 73.2, None, paper=paper),
        write_run(tmp_path / "b", "cifar10_lt/bs", 0, 78.96, 80.57, 72.5, None, paper={"top1": 83.57}),
    ]
    text = report_markdown(summarize_runs(runs))
    header = next(line for line in text.splitlines() if line.startswith("| preset"))
    assert header == (
        "| preset | IF | n | epochs | top-1 ours (final epoch) | top-1 paper | top-1 diff "
        "| many ours (final epoch) | medium ours (final epoch) |"
    )
    assert "| cifar10_lt/dbm_bs | 100 | 1 | 200 | 79.58 | 84.60 | -5.02 | 81.18 | 73.20 |" in text
    assert (
        "Left out, without a value in any row: many paper, many diff, medium paper, medium diff, few (every column)."
    ) in text
    # one row with a value keeps the column for every row
    runs.append(write_run(tmp_path / "c", "cifar10_lt/ce", 0, 72.87, 78.05, 52.15, 10.0))
    text = report_markdown(summarize_runs(runs))
    assert (
        "| few ours (final epoch) |" in text
        and "| cifar10_lt/bs | 100 | 1 | 200 | 78.96 | 83.57 | -4.61 | 80.57 | 72.50 | - |" in text
    )
    out = tmp_path / "report.md"
    cli.main(["report", *map(str, runs[:2]), "--out", str(out)])
    assert "few_mean" in open(out.with_suffix(".csv")).readline()


def test_dbm_rows_are_compared_with_their_baselines_seed_by_seed(tmp_path):
    ce_paper, dbm_paper = {"top1": 78.48, "source": "Table 2"}, {"top1": 80.84, "source": "Table 2"}
    ce = {0: (72.0, 80.0, 50.0), 1: (73.0, 81.0, 52.0), 2: (71.0, 79.5, 49.0)}
    dbm = {0: (73.0, 80.5, 52.0), 1: (73.5, 80.0, 55.0), 2: (72.5, 80.5, 51.0), 3: (90.0, 90.0, 90.0)}
    runs = [write_run(tmp_path / f"ce_s{s}", "cifar10_lt/ce", s, *v, paper=ce_paper) for s, v in ce.items()] + [
        write_run(tmp_path / f"dbm_s{s}", "cifar10_lt/dbm_ce", s, *v, paper=dbm_paper) for s, v in dbm.items()
    ]
    runs += [  # K = 0.3: a second DBM group, paired with the same CE runs
        write_run(tmp_path / f"k3_s{s}", "cifar10_lt/dbm_ce", s, top1, loss={"max_margin": 0.3}, paper=dbm_paper)
        for s, top1 in ((0, 74.0), (1, 72.0))
    ]
    runs += [write_run(tmp_path / "ce_if10", "cifar10_lt/ce", 0, 90.0, imbalance_factor=10)]  # no DBM at IF 10
    rows = summarize_runs(runs)
    pairs = paired_differences(rows)
    assert [(p.row.settings, p.seeds) for p in pairs] == [
        ("loss.max_margin=0.1", [0, 1, 2]),
        ("loss.max_margin=0.3", [0, 1]),
    ]
    k1, k3 = pairs
    expected = [dbm[s][0] - ce[s][0] for s in (0, 1, 2)]  # seed 3 has no CE run
    assert k1.diffs["top1"] == pytest.approx(expected) == [1.0, 0.5, 1.5]
    assert k1.mean("top1") == pytest.approx(1.0)
    assert k1.stderr("top1") == pytest.approx(statistics.stdev(expected) / 3**0.5)  # 0.289
    low, high = k1.interval("top1")  # t(0.975, 2 df) = 4.303: 1 +- 4.303 * 0.2887
    assert (low, high) == pytest.approx((1.0 - 4.3027 * 0.28868, 1.0 + 4.3027 * 0.28868), abs=1e-3)
    assert k1.mean("medium") == pytest.approx(statistics.fmean([2.0, 3.0, 2.0]))
    assert k1.paper("top1") == pytest.approx(2.36) and k1.paper("many") is None
    assert k3.diffs["top1"] == pytest.approx([2.0, -1.0]) and k3.diffs["many"] == []  # K = 0.3 runs have no many
    text = report_markdown(rows)
    section = text[text.index("## DBM against its baseline") :]
    assert (
        "| cifar10_lt/dbm_ce (loss.max_margin=0.1) - cifar10_lt/ce | 100 | 0, 1, 2 | +1.00, +0.50, +1.50 "
        "| +1.00 +- 0.29 | -0.24 to +2.24 | +2.36 | +0.17 +- 0.60 | - | +2.33 +- 0.33 | - |" in section
    )
    assert "| 0, 1 | +2.00, -1.00 | +0.50 +- 1.50 | -18.56 to +19.56 | +2.36 | - | - | - | - |" in section
    assert "few" not in section and "IF 10" not in section and "| 10 |" not in section


def test_t_quantiles_match_the_closed_forms_and_the_tables():
    """Student's t quantiles: the closed forms for 1 degree of freedom (Cauchy: tan(pi (p - 1/2)))
    and 2 ((2p - 1) / sqrt(2p(1 - p))), the printed tables' values beyond, the normal's in the limit."""
    for p in (0.5, 0.75, 0.9, 0.95, 0.975, 0.995, 0.999, 0.9995, 0.99999):  # far tails too
        assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-6, abs=1e-9)
        want = (2 * p - 1) / math.sqrt(2 * p * (1 - p))
        assert t_quantile(p, 2) == pytest.approx(want, rel=1e-6, abs=1e-9)
    table = {(0.975, 3): 3.1824, (0.975, 4): 2.7764, (0.975, 10): 2.2281, (0.975, 30): 2.0423, (0.95, 5): 2.0150}
    for (p, df), value in table.items():
        assert t_quantile(p, df) == pytest.approx(value, abs=1e-4)
    assert t_quantile(0.975, 100_000) == pytest.approx(statistics.NormalDist().inv_cdf(0.975), abs=1e-4)
    for bad in ((0.3, 2), (1.0, 2), (0.975, 0)):
        with pytest.raises(ValueError, match="t_quantile needs"):
            t_quantile(*bad)


def test_unpaired_rows_and_repeated_seeds_give_no_paired_difference(tmp_path):
    runs = [
        write_run(tmp_path / "ce", "cifar10_lt/ce", 0, 70.0),
        write_run(tmp_path / "ldam", "cifar10_lt/ldam", 0, 72.0),  # LDAM is no DBM row's baseline
        write_run(tmp_path / "dbm_a", "cifar10_lt/dbm_ce", 1, 71.0),  # no CE run of seed 1
        write_run(tmp_path / "dbm_b", "cifar10_lt/dbm_bs", 0, 71.0),
        write_run(tmp_path / "bs_a", "cifar10_lt/bs", 0, 70.0),
        write_run(tmp_path / "bs_b", "cifar10_lt/bs", 0, 70.5),  # seed 0 twice: which run pairs is unknown
    ]
    rows = summarize_runs(runs)
    assert paired_differences(rows) == []
    assert "DBM against its baseline" not in report_markdown(rows)
