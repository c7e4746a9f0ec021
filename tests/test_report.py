import csv
import io
import json
import math
import shutil
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from absa.fleet import report as R
from absa.fleet.report import draw, read, terminal
from absa.run import config as C

# (method, row batch) -> per seed: (final test acc, updates, final batch). The row is the
# paper's: the fixed batch of BL, the maximum batch of ABSA (which starts at 16 here).
RUNS = {
    ("bl", 32): [(90.0, 100, 32), (92.0, 100, 32)],
    ("bl", 512): [(80.0, 10, 512), (84.0, 10, 512)],
    ("absa", 32): [(91.0, 40, 32), (93.0, 44, 32)],
    ("absa", 512): [(89.5, 8, 256), (90.5, 9, 512)],
}


def _write_run(root, name, overrides, acc, updates, final_batch, epochs=3, finished=True):
    folder = root / name
    folder.mkdir(parents=True)
    cfg = C.load(None, [f"train.epochs={epochs}", *overrides])
    (folder / "config.yaml").write_text(C.dump_yaml(cfg))
    start = cfg.batch.size
    lines = []
    for e in range(epochs):
        last = e == epochs - 1
        lines.append(
            {
                "epoch": e,
                "method": cfg.schedule.method,
                "updates": updates * (e + 1) // epochs,
                "batch_size": final_batch if last else start,
                "lr": 0.1 * (0.5**e),
                "test_acc": acc if last else acc - 10 + e,
                "test_loss": 0.5,
                "lambda_max": 10.0 / (e + 1) if cfg.schedule.method == "absa" else None,
            }
        )
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    if finished:
        summary = {
            "run_dir": str(folder),
            "epochs": epochs,
            "updates": updates,
            "final_batch": final_batch,
            "test_loss": 0.5,
            "test_acc": acc,
            "best_test_acc": acc + 1.0,  # best differs from final: the table uses the final
            "train_seconds": 1.0,
            "hessian_seconds": 0.1,
            "eval_seconds": 0.1,
            "growths": [],
        }
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture
def sweep_dir(tmp_path):
    runs = tmp_path / "sweep" / "runs"
    for (method, batch), seeds in RUNS.items():
        for seed, (acc, updates, final) in enumerate(seeds):
            over = [f"schedule.method={method}", f"batch.size={batch}", f"train.seed={seed}"]
            if method == "absa":
                over[1] = "batch.size=16"
                over.append(f"schedule.max_batch={batch}")
            _write_run(runs, f"{method}-b{batch}-s{seed}", over, acc, updates, final)
    _write_run(runs, "bl-b32-s2", ["batch.size=32", "train.seed=2"], 0.0, 1, 32, finished=False)
    return tmp_path / "sweep"


def test_collect_ignores_unfinished(sweep_dir):
    recs = R.collect(sweep_dir)
    assert len(recs) == 8
    assert recs.unfinished == ["bl-b32-s2"]
    r = next(r for r in recs if r.name == "absa-b512-s1")
    assert (r.method, r.batch_size, r.seed, r.final_batch) == ("absa", 512, 1, 512)
    assert r.test_acc == 90.5 and r.best_test_acc == 91.5 and r.updates == 9
    assert len(r.metrics) == 3


def test_table_means_stds_updates(sweep_dir):
    rows = R.table(R.collect(sweep_dir))
    assert [(r["batch"], r["method"]) for r in rows] == [
        (32, "bl"),
        (32, "absa"),
        (512, "bl"),
        (512, "absa"),
    ]
    for row in rows:
        seeds = RUNS[(row["method"], row["batch"])]
        accs = [s[0] for s in seeds]
        assert row["n_seeds"] == 2 and row["seeds"] == [0, 1]
        assert row["variant"] == ""
        assert row["acc_mean"] == pytest.approx(sum(accs) / 2, abs=1e-12)
        assert row["acc_std"] == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2), abs=1e-12)
        assert row["best_acc_mean"] == pytest.approx(sum(accs) / 2 + 1.0, abs=1e-12)
        assert row["updates_mean"] == sum(s[1] for s in seeds) / 2
        assert row["final_batch"] == max(s[2] for s in seeds)
    by = {(r["method"], r["batch"]): r for r in rows}
    assert by[("bl", 32)]["acc_mean"] == 91.0
    assert by[("bl", 512)]["acc_std"] == pytest.approx(2 * math.sqrt(2))
    assert by[("absa", 32)]["updates_mean"] == 42.0
    assert by[("absa", 512)]["final_batch_min"] == 256


def test_markdown_cells(sweep_dir):
    md = R.to_markdown(R.table(R.collect(sweep_dir)))
    lines = md.splitlines()
    assert lines[0] == "| batch | BL | ABSA |"
    assert lines[2] == "| 32 | 91.00 ± 1.41 / 100 | 92.00 ± 1.41 / 42 → 32 |"
    assert lines[3] == "| 512 | 82.00 ± 2.83 / 10 | 90.00 ± 0.71 / 8.5 → 256–512 |"
    assert "2 seeds" in md


def test_csv_parses_back(sweep_dir):
    rows = R.table(R.collect(sweep_dir))
    back = list(csv.DictReader(io.StringIO(R.to_csv(rows))))
    assert len(back) == 4
    for got, want in zip(back, rows, strict=True):
        assert int(got["batch"]) == want["batch"] and got["method"] == want["method"]
        assert float(got["acc_mean"]) == want["acc_mean"]
        assert float(got["acc_std"]) == want["acc_std"]
        assert float(got["best_acc_mean"]) == want["best_acc_mean"]
        assert float(got["updates_mean"]) == want["updates_mean"]
        assert got["seeds"] == "0;1"


def test_make_report_writes_files_and_plots(sweep_dir, tmp_path):
    buf = io.StringIO()
    res = R.make_report(sweep_dir, console=Console(file=buf, width=120))
    out = sweep_dir / "report"
    assert res.md_path == out / "report.md" and res.csv_path == out / "report.csv"
    assert res.md_path.read_text() == res.markdown
    assert "91.00 ± 1.41 / 100" in res.markdown
    assert "1 unfinished runs ignored: bl-b32-s2" in res.markdown
    assert res.n_runs == 8 and res.unfinished == ["bl-b32-s2"]
    names = sorted(p.name for p in res.plots)
    assert names == [
        "accuracy_vs_batch.png",
        "accuracy_vs_time.png",
        "accuracy_vs_updates.png",
        "trajectories.png",
        "updates_vs_batch.png",
    ]
    for p in res.plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
    assert "ABSA" in buf.getvalue() and "91.00 ± 1.41 / 100" in buf.getvalue()
    other = R.make_report(sweep_dir, out_dir=tmp_path / "elsewhere")
    assert other.csv_path.parent == tmp_path / "elsewhere"


def test_varying_key_becomes_a_column(tmp_path):
    runs = tmp_path / "s" / "runs"
    _write_run(runs, "bl-s0", ["batch.size=64"], 80.0, 10, 64)
    for i, eps in enumerate((0.005, 0.01)):
        over = ["batch.size=64", "schedule.method=absa", "schedule.max_batch=512"]
        _write_run(runs, f"absa-{i}", [*over, f"adversarial.eps={eps}"], 85.0 + i, 5, 512)
    rows = R.table(R.collect(tmp_path / "s"))
    assert [r["column"] for r in rows] == ["BL", "ABSA (eps=0.005)", "ABSA (eps=0.01)"]
    assert (
        R.to_markdown(rows).splitlines()[0] == "| batch | BL | ABSA (eps=0.005) | ABSA (eps=0.01) |"
    )


def test_no_finished_runs_is_one_line_error(tmp_path):
    _write_run(tmp_path / "s" / "runs", "x", [], 1.0, 1, 128, finished=False)
    with pytest.raises(R.ReportError, match=r"no finished runs .*1 unfinished"):
        R.make_report(tmp_path / "s")


def test_plot_spectra(tmp_path):
    spectra = {
        "B=32": [5.0, 3.0, 1.0, 0.5],
        "B=4096": [50.0, 20.0, 8.0, 6.0],
        "B=4096 + adversarial": [20.0, 9.0, 4.0, 2.0],
    }
    p = R.plot_spectra(spectra, tmp_path / "spectra.png")
    assert p.stat().st_size > 5000
    q = R.plot_spectra({"a": [3.0, -0.5], "b": [1.0, 0.0]}, tmp_path / "neg.png")
    assert q.stat().st_size > 0


def _set_config_section(folder, section, value):
    tree = C.read_yaml(folder / "config.yaml")
    tree[section] = value
    (folder / "config.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))


def _append_metrics(folder, line):
    with (folder / "metrics.jsonl").open("a") as fh:
        fh.write(line + "\n")


# (damage to a finished run folder, the file blamed, why)
DAMAGE = [
    (lambda f: (f / "summary.json").write_text("[1, 2]"), "summary.json", "not a JSON object (got array)"),
    (lambda f: (f / "summary.json").write_text("{"), "summary.json", "not valid JSON"),
    (lambda f: (f / "summary.json").write_text('{"test_acc": 1}'), "summary.json", "no 'updates' entry"),
    (lambda f: _set_config_section(f, "optim", 3), "config.yaml", "section 'optim' is not a mapping (got int)"),
    (lambda f: _set_config_section(f, "train", [1]), "config.yaml", "section 'train' is not a mapping (got list)"),
    (lambda f: _append_metrics(f, "[1,2]"), "metrics.jsonl", "line 4 is not a JSON object (got array)"),
    (lambda f: _append_metrics(f, "5"), "metrics.jsonl", "line 4 is not a JSON object (got number)"),
    (lambda f: _append_metrics(f, '{"epoch": "x"}'), "metrics.jsonl", "line 4: 'epoch' is not a number (got string)"),
]  # fmt: skip


@pytest.mark.parametrize("damage, blamed, why", DAMAGE)
def test_unreadable_run_is_skipped_with_a_warning(tmp_path, damage, blamed, why):
    runs = tmp_path / "s" / "runs"
    _write_run(runs, "good", ["batch.size=64"], 80.0, 10, 64)
    bad = _write_run(runs, "bad", ["batch.size=64", "train.seed=1"], 70.0, 10, 64)
    damage(bad)
    warnings = []
    res = R.make_report(tmp_path / "s", warn=warnings.append)
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith(f"{bad / blamed}: {why}") and warnings[0].endswith("skipped")
    assert res.n_runs == 1 and res.rows[0]["runs"] == ["good"]
    assert f"1 unreadable runs ignored ({bad / blamed}: {why}" in res.markdown


@pytest.mark.parametrize("damage, blamed, why", DAMAGE[:1] + DAMAGE[3:4] + DAMAGE[5:6])
def test_no_readable_run_error_says_why(tmp_path, damage, blamed, why):
    runs = tmp_path / "s" / "runs"
    for i in range(3):
        damage(_write_run(runs, f"r{i}", [f"train.seed={i}"], 70.0, 10, 128))
    _write_run(runs, "u", [], 1.0, 1, 128, finished=False)
    warnings = []
    with pytest.raises(R.ReportError) as e:
        R.make_report(tmp_path / "s", warn=warnings.append)
    assert str(e.value) == (
        f"{tmp_path / 's'}: no readable runs: 3 skipped, 1 unfinished "
        f"(first: {runs / 'r0' / blamed}: {why})"
    )
    assert warnings == [] and not (tmp_path / "s" / "report").exists()


def test_torn_last_metrics_line_is_still_ignored(sweep_dir):
    _append_metrics(sweep_dir / "runs" / "bl-b32-s0", '{"epoch": 3, "test_a')
    recs = R.collect(sweep_dir)
    assert len(recs) == 8 and not recs.unreadable


# --- issue 15 / issue 10: labels, one seed, cost and robustness columns ----------------------


def _with_summary(folder, **extra):
    path = folder / "summary.json"
    summary = json.loads(path.read_text())
    summary.update(extra)
    path.write_text(json.dumps(summary))


def _with_metrics(folder, change):
    path = folder / "metrics.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    for rec in lines:
        change(rec)
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_one_seed_shows_n_instead_of_zero_std(tmp_path):
    runs = tmp_path / "s" / "runs"
    _write_run(runs, "bl", ["batch.size=64"], 98.5, 10, 64)
    md = R.to_markdown(R.table(R.collect(tmp_path / "s")))
    assert "| 64 | 98.50 (n=1) / 10 |" in md and "± 0.00" not in md and "1 seed" in md


def test_ablations_get_their_own_labelled_columns(tmp_path):
    runs = tmp_path / "s" / "runs"
    grow = ["batch.size=16", "schedule.method=absa", "schedule.max_batch=512"]
    src = _write_run(runs, "absa", grow, 90.0, 10, 512)
    _write_run(runs, "absa-dur", [*grow, "schedule.eigenvalue_trigger=false"], 89.0, 12, 512)
    _write_run(runs, "replay", ["batch.size=16", "schedule.method=replay",
                                f"schedule.replay_from={src}"], 88.0, 11, 512)  # fmt: skip
    _write_run(runs, "gns", ["batch.size=16", "schedule.method=gns", "schedule.max_batch=512"],
               87.0, 13, 512)  # fmt: skip
    rows = R.table(R.collect(tmp_path / "s"))
    assert [r["column"] for r in rows] == ["ABSA", "ABSA (duration only)", "GNS", "replay of ABSA"]
    assert {r["column"]: r["ablation"] for r in rows} == {
        "ABSA": False, "ABSA (duration only)": True, "GNS": False, "replay of ABSA": True,
    }  # fmt: skip
    assert {r["batch"] for r in rows} == {512}  # the replay sits in its source's row
    assert all("→ 512" in R.cell(r) for r in rows)  # growing methods from the registry


def test_growing_methods_come_from_the_registry():
    """The report's row rule (max_batch row) asks the policy registry, not a list of names."""
    from absa.core.policies import METHODS

    varies = {m for m in METHODS if R.batch_varies(m)}
    assert varies == {m for m, cls in METHODS.items() if cls.grows or cls.replays}
    assert {"seesaw", "gns", "inner_product", "hybrid", "replay"} <= varies
    assert "bl" not in varies and "fb" not in varies


def test_key_missing_from_an_older_config_counts_as_its_default(tmp_path):
    runs = tmp_path / "s" / "runs"
    _write_run(runs, "a", ["batch.size=64"], 80.0, 10, 64)
    old = _write_run(runs, "b", ["batch.size=64", "train.seed=1"], 82.0, 10, 64)
    tree = C.read_yaml(old / "config.yaml")
    del tree["train"]["deterministic"]  # written before the key existed
    (old / "config.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    rows = R.table(R.collect(tmp_path / "s"))
    assert [(r["column"], r["n_seeds"]) for r in rows] == [("BL", 2)]


def test_cost_columns(tmp_path):
    runs = tmp_path / "s" / "runs"
    # BL at 32 ends at 90: target 89. Accuracies per epoch: acc-10, acc-9, acc (3 epochs)
    _write_run(runs, "bl32", ["batch.size=32"], 90.0, 30, 32)
    absa = ["batch.size=16", "schedule.method=absa", "schedule.max_batch=256",
            "adversarial.method=pgd", "adversarial.pgd_steps=3"]  # fmt: skip
    a0 = _write_run(runs, "absa-s0", absa, 95.0, 12, 256)  # 85, 86, 95: reaches 89 at the end
    a1 = _write_run(runs, "absa-s1", [*absa, "train.seed=1"], 88.0, 12, 256)  # never reaches 89

    def cost(rec):
        rec.update(samples=1000, adv_samples=100, hessian_hvps=7)

    for f in (a0, a1):
        _with_metrics(f, cost)
        _with_summary(f, train_seconds=4.0, hessian_seconds=1.0, eval_seconds=0.5)
    rows = R.table(R.collect(tmp_path / "s"))
    bl, ab = rows[0], rows[1]
    assert bl["target_acc"] == pytest.approx(89.0) and bl["updates_to_target_mean"] == 30
    assert ab["target_reached"] == 1 and ab["updates_to_target_mean"] == 12
    assert ab["samples_processed_mean"] == 3 * (1000 + 100 * 3)  # pgd: 3 steps per example
    assert ab["hvps_mean"] == 21 and ab["hessian_share_mean"] == pytest.approx(0.25)
    assert ab["wall_seconds_mean"] == pytest.approx(5.5)
    assert bl["samples_processed_mean"] is None  # old metrics without "samples"
    md = R.cost_markdown(rows)
    assert "| 256 | ABSA | 2 | 91.50 | 12 | 12 (1/2) | – | 3.9k | 21 | 25.0% | 5.5 |" in md
    assert "target 89.00% = BL at B = 32 (90.00%) - 1 pt" in md
    back = list(csv.DictReader(io.StringIO(R.to_csv(rows))))
    assert (
        float(back[1]["updates_to_target_mean"]) == 12 and back[0]["samples_processed_mean"] == ""
    )


def test_time_to_target_sums_train_and_hessian_seconds_until_reached(tmp_path):
    """Hand-written metrics: BL at 32 ends at 90 (target 89); ABSA's seeds reach it at epoch
    2 and 1 (0-based). Time to target = train + Hessian seconds of the epochs up to it, with
    the evaluation seconds left out; a seed that never reaches it does not count."""
    runs = tmp_path / "s" / "runs"
    _write_run(runs, "bl32", ["batch.size=32"], 90.0, 30, 32)  # 80, 81, 90
    absa = ["batch.size=16", "schedule.method=absa", "schedule.max_batch=256"]
    a0 = _write_run(runs, "absa-s0", absa, 95.0, 12, 256)  # 85, 86, 95: epoch 2
    a1 = _write_run(runs, "absa-s1", [*absa, "train.seed=1"], 91.0, 12, 256)
    a2 = _write_run(runs, "absa-s2", [*absa, "train.seed=2"], 88.0, 12, 256)  # never

    def timed(rec):
        e = rec["epoch"]
        rec.update(train_seconds=10.0 + e, hessian_seconds=0.5, eval_seconds=100.0)

    def early(rec):
        timed(rec)
        rec["test_acc"] = 89.5 if rec["epoch"] == 1 else rec["test_acc"]

    for f, change in ((a0, timed), (a1, early), (a2, timed)):
        _with_metrics(f, change)
    rows = R.table(R.collect(tmp_path / "s"))
    bl, ab = rows[0], rows[1]
    assert R.seconds_to_reach(R.collect(tmp_path / "s")[0], None) is None
    assert bl["seconds_to_target_mean"] is None  # its metrics have no seconds
    # seed 0: (10 + 11 + 12) + 3 * 0.5 = 34.5; seed 1: (10 + 11) + 2 * 0.5 = 22.0
    assert ab["seconds_to_target_mean"] == pytest.approx((34.5 + 22.0) / 2)
    assert ab["seconds_to_target_n"] == 2 and ab["target_reached"] == 2
    assert R.cost_header()[6] == "time to target"
    assert R.cost_cells(ab)[5:7] == ["10 (2/3)", "28.2 (2/3)"]
    assert R.cost_cells(bl)[6] == "–"
    md = R.cost_markdown(rows)
    assert "| 28.2 (2/3) |" in md and "evaluation excluded" in md
    back = list(csv.DictReader(io.StringIO(R.to_csv(rows))))
    assert float(back[1]["seconds_to_target_mean"]) == pytest.approx(28.25)
    assert back[0]["seconds_to_target_mean"] == ""
    buf = io.StringIO()
    R.make_report(tmp_path / "s", console=Console(file=buf, width=160))
    assert "time to" in buf.getvalue() and "28.2 (2/3)" in buf.getvalue()


def test_no_bl_run_means_no_target(tmp_path):
    runs = tmp_path / "s" / "runs"
    _write_run(runs, "fb", ["batch.size=64", "schedule.method=fb"], 80.0, 10, 64)
    rows = R.table(R.collect(tmp_path / "s"))
    assert rows[0]["target_acc"] is None and "no BL run" in R.cost_caption(rows)
    assert R.cost_cells(rows[0])[5] == "–"


def test_robust_accuracy_columns(tmp_path):
    runs = tmp_path / "s" / "runs"
    for seed, pgd in enumerate((40.0, 50.0)):
        f = _write_run(runs, f"bl-s{seed}", ["batch.size=64", f"train.seed={seed}"], 90.0, 10, 64)
        _with_summary(
            f,
            robust=[
                {"attack": "clean", "eps": 0.0, "loss": 0.3, "acc": 90.0, "n": 100},
                {"attack": "fgsm", "eps": 0.01, "loss": 0.9, "acc": 70.0, "n": 100},
                {"attack": "pgd", "eps": 0.01, "loss": 1.0, "acc": pgd, "n": 100},
            ],
        )
    _write_run(runs, "other", ["batch.size=32"], 91.0, 20, 32)  # no robust rows
    rows = R.table(R.collect(tmp_path / "s"))
    assert R.robust_columns(rows) == ["clean", "fgsm 0.01", "pgd 0.01"]
    row = next(r for r in rows if r["batch"] == 64)
    assert row["robust"] == {"clean": 90.0, "fgsm 0.01": 70.0, "pgd 0.01": 45.0}
    md = R.cost_markdown(rows)
    assert "| batch | method | clean | fgsm 0.01 | pgd 0.01 |" in md
    assert (
        "| 64 | BL | 90.00 | 70.00 | 45.00 |" in md and "| 32 | BL |" not in md.split("Robust")[1]
    )
    back = list(csv.DictReader(io.StringIO(R.to_csv(rows))))
    assert back[1]["robust_pgd_0.01"] == "45.0" and back[0]["robust_pgd_0.01"] == ""


def test_bad_robust_rows_make_the_run_unreadable(tmp_path):
    runs = tmp_path / "s" / "runs"
    _write_run(runs, "good", ["batch.size=64"], 80.0, 10, 64)
    bad = _write_run(runs, "bad", ["batch.size=64", "train.seed=1"], 80.0, 10, 64)
    _with_summary(bad, robust=[{"attack": "fgsm"}])
    recs = R.collect(tmp_path / "s")
    assert len(recs) == 1 and "'robust'" in recs.unreadable["bad"]


def test_rich_output_has_a_caption_paragraph_and_cost_table(sweep_dir):
    buf = io.StringIO()
    R.make_report(sweep_dir, console=Console(file=buf, width=100))
    text = buf.getvalue()
    # the caption is one paragraph at the console's width, not wrapped into table columns
    assert "Final-epoch test accuracy (%), mean ± std over 2 seeds / mean number of SGD" in text
    assert "cost: sweep" in text and "to target" in text


def test_figure_titles_name_sweep_dataset_and_model(sweep_dir, monkeypatch):
    titles = []
    real = draw.save

    def spy(fig, path):
        titles.append(fig._suptitle.get_text() if fig._suptitle else fig.axes[0].get_title())
        return real(fig, path)

    monkeypatch.setattr(draw, "save", spy)
    res = R.make_report(sweep_dir)
    assert len(titles) == len(res.plots) == 5
    for t in titles:
        assert "sweep" in t and "digits, small_cnn (width 16)" in t


# --- issue 15, pictures and terminal tables (looked at on the Fashion-MNIST sweep) -----------


def _figures(monkeypatch):
    """Every figure make_report saves, by file name, kept open (and drawn) for inspection."""
    figs = {}

    def spy(fig, path):
        fig.canvas.draw()  # tick labels are only formatted when drawn
        figs[path.name] = fig
        path.write_bytes(b"")
        return path

    monkeypatch.setattr(draw, "save", spy)
    return figs


def _labels(axis):
    return [t.get_text() for t in axis.get_ticklabels() if t.get_text()]


@pytest.mark.parametrize(
    "lo, hi, want",
    [
        (128, 16384, ["128", "256", "512", "1024", "2048", "4096", "8192", "16384"]),
        (16, 16384, ["16", "64", "256", "1024", "4096", "16384"]),  # the top one is kept
        (32, 32, ["32"]),
    ],
)
def test_log2_batch_axis_has_plain_labels(lo, hi, want):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [lo, hi])
    ax.set_yscale("log", base=2)
    draw.log2_axis(ax.yaxis, [lo, hi])
    fig.canvas.draw()
    got = _labels(ax.yaxis)
    plt.close(fig)
    assert got == want and len(got) <= R.LOG2_TICKS


def test_trajectories_are_small_multiples_with_plain_log2_labels(sweep_dir, monkeypatch):
    figs = _figures(monkeypatch)
    R.make_report(sweep_dir)
    fig = figs["trajectories.png"]
    axes = fig.axes
    assert len(axes) == 3 * 2  # one row per method (BL, ABSA): batch, lr, lambda_max
    assert [axes[1].get_title(), axes[4].get_title()] == ["BL", "ABSA"]
    batch_labels = _labels(axes[0].yaxis)
    assert batch_labels[0] == "16" and batch_labels[-1] == "512"
    every = [t for ax in axes for axis in (ax.xaxis, ax.yaxis) for t in _labels(axis)]
    assert not [t for t in every if "10^" in t or "$" in t or "times" in t]
    # seeds thin, their mean bold: ABSA at 512 has two seeds, so three lines per panel
    absa_batch = axes[3]
    widths = sorted(ln.get_linewidth() for ln in absa_batch.lines if ln.get_color() == "C1")
    assert len(widths) == 3 and widths[0] < 1 < widths[-1]
    assert "sweep" in fig._suptitle.get_text() and "digits" in fig._suptitle.get_text()


def test_accuracy_vs_batch_zooms_on_the_top_cells(tmp_path, monkeypatch):
    runs = tmp_path / "s" / "runs"
    grow = ["batch.size=16", "schedule.max_batch=512"]
    _write_run(runs, "bl16", ["batch.size=16"], 90.6, 100, 16)
    _write_run(runs, "bl512", ["batch.size=512"], 70.0, 10, 512)
    _write_run(runs, "gg", [*grow, "schedule.method=gg"], 90.5, 40, 512)
    _write_run(runs, "abs", [*grow, "schedule.method=abs"], 89.8, 20, 512)
    _write_run(runs, "absa", [*grow, "schedule.method=absa"], 89.6, 19, 512)
    figs = _figures(monkeypatch)
    R.make_report(tmp_path / "s")
    full, zoom = figs["accuracy_vs_batch.png"].axes[:2]
    assert full.get_ylim()[0] < 70.0  # the overview shows everything
    assert _labels(zoom.xaxis) == ["BL", "GG", "ABS", "ABSA"]  # one slot per top cell
    lo, hi = zoom.get_ylim()
    assert 88.0 < lo < 89.6 and 90.6 < hi < 92.0  # ~0.2 pt per cell spacing is readable
    texts = " ".join(t.get_text() for t in zoom.texts)
    assert "89.80" in texts and "89.60" in texts  # the values are written on
    assert "not in the zoom" in texts and "BL 70.0" in texts
    legend = [t.get_text() for t in zoom.get_legend().get_texts()]
    assert legend == ["BL at B = 16: 90.60%", "target 89.60% (1 pt below it)"]


def test_one_seed_prints_n_in_the_terminal_too(tmp_path):
    runs = tmp_path / "s" / "runs"
    _write_run(runs, "bl", ["batch.size=64"], 98.5, 10, 64)
    buf = io.StringIO()
    R.make_report(tmp_path / "s", console=Console(file=buf, width=100))
    text = buf.getvalue()
    assert "98.50 (n=1) / 10" in text and "± 0.00" not in text and "1 seed" in text


def test_wide_tables_are_transposed_or_split_on_a_narrow_terminal(tmp_path):
    runs = tmp_path / "s" / "runs"
    for i, lr in enumerate((0.01, 0.02, 0.05, 0.1, 0.2, 0.4)):
        _write_run(runs, f"bl-{i}", ["batch.size=64", f"optim.lr={lr}"], 90.0 + i, 10, 64)
    grow = ["batch.size=16", "schedule.method=absa", "schedule.max_batch=512"]
    _write_run(runs, "dur", [*grow, "schedule.eigenvalue_trigger=false"], 85.0, 12, 512)
    rows = R.table(R.collect(tmp_path / "s"))
    wide = Console(file=io.StringIO(), width=300)
    assert R.rich_tables(rows, "t", wide)[1] is False  # the paper's shape when it fits
    buf = io.StringIO()
    R.make_report(tmp_path / "s", console=Console(file=buf, width=80))
    text = buf.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "shown transposed" in text
    for label in ("BL (lr=0.01)", "BL (lr=0.4)", "ABSA (duration only)", "not reached"):
        assert label in text  # headers and cells are never wrapped or cut ...
    assert "…" not in text
    for i in range(6):
        assert f"{90 + i:.2f} (n=1)" in text  # ... so every cell is readable
    assert "cost: s (1/3)" in text and "cost: s (3/3)" in text  # split, batch/method repeated
    assert text.count("ABSA (duration only)") >= 3


def test_fit_tables_splits_columns_and_repeats_the_keys():
    header = ["batch", "method", *(f"column {i}" for i in range(12))]
    lines = [["128", "BL", *(f"{i}.00" for i in range(12))]]
    narrow = Console(file=io.StringIO(), width=60)
    parts = R.fit_tables(narrow, "t", header, lines, keys=2, left=(1,))
    assert len(parts) > 1
    names = [[c.header for c in p.columns] for p in parts]
    assert all(n[:2] == ["batch", "method"] for n in names)
    assert [h for n in names for h in n[2:]] == header[2:]
    assert len(R.fit_tables(None, "t", header, lines)) == 1  # no console: one table


def test_a_table_title_stays_on_one_line():
    title = "cost: docs/reproduce_fmnist/sweep/runs (a long sweep path)"
    buf = io.StringIO()
    Console(file=buf, width=80).print(terminal._table(title, ["batch", "acc"], [["32", "9.0"]]))
    assert title in buf.getvalue().splitlines()[0], buf.getvalue()


def test_replay_of_a_moved_sweep_finds_its_source_next_to_it(tmp_path, monkeypatch):
    runs = tmp_path / "committed" / "runs"
    grow = ["batch.size=16", "schedule.method=absa", "schedule.max_batch=512"]
    _write_run(runs, "absa-s0", grow, 80.0, 10, 512)
    # recorded where the sweep ran: relative to another working directory, gone now
    _write_run(runs, "replay-s0", ["batch.size=16", "schedule.method=replay",
               "schedule.replay_from=sweeps/elsewhere/runs/absa-s0"], 80.0, 10, 512)  # fmt: skip
    monkeypatch.chdir(tmp_path)
    rows = R.table(R.collect(tmp_path / "committed"))
    assert [(r["batch"], r["column"]) for r in rows] == [(512, "ABSA"), (512, "replay of ABSA")]


def test_integral_float_variants_print_as_integers(tmp_path):
    runs = tmp_path / "s" / "runs"
    for w in (2, 5):
        over = ["batch.size=256", "schedule.method=fb", "schedule.ref_batch=32"]
        _write_run(runs, f"fb-{w}", [*over, f"schedule.warmup_epochs={w}"], 80.0, 10, 256)
    rows = R.table(R.collect(tmp_path / "s"))
    assert [r["column"] for r in rows] == ["FB (warmup_epochs=2)", "FB (warmup_epochs=5)"]


def test_one_report_over_several_sweeps(tmp_path):
    """`absa report A B`: one table over the runs of both sweeps; two runs of one name are a
    one-line error."""
    from typer.testing import CliRunner

    from absa.cli import app

    root = Path(__file__).resolve().parent.parent / "docs" / "reproduce_fmnist"
    a, b = tmp_path / "a", tmp_path / "b"
    for src, dst, names in (
        (root / "sweep", a, ["abs-bmax4096-s0", "bl-b128-lr0.1-s0"]),
        (root / "signals", b, ["gns-bmax4096-s0"]),
    ):
        for n in names:
            shutil.copytree(src / "runs" / n, dst / "runs" / n)
    res = CliRunner().invoke(app, ["report", str(a), str(b), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((tmp_path / "r" / "report.csv").open()))
    assert sorted(r["method"] for r in rows) == ["abs", "bl", "gns"], rows
    assert "3 finished runs from" in (tmp_path / "r" / "report.md").read_text()
    shutil.copytree(b / "runs" / "gns-bmax4096-s0", a / "runs" / "gns-bmax4096-s0")
    res = CliRunner().invoke(app, ["report", str(a), str(b), "--out", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "two runs named gns-bmax4096-s0" in res.output


def test_up_to_twenty_methods_get_distinct_colours():
    cols = [f"m{i}" for i in range(14)]
    styles = draw.styles(cols)
    assert len({tuple(map(float, __import__("matplotlib").colors.to_rgba(s["color"])))
                for s in styles.values()}) == 14  # fmt: skip
    assert draw.styles(cols[:10])["m3"]["color"] == "C3"  # up to 10: the default cycle


def test_report_takes_one_run_folder_or_a_folder_of_runs(tmp_path):
    """`absa report runs/twin` on one finished run reports it (it once said "no finished
    runs"); a plain folder of run folders works as well."""
    from typer.testing import CliRunner

    from absa.cli import app

    runs = tmp_path / "runs"
    _write_run(runs, "twin", ["batch.size=32"], 90.0, 100, 32)
    _write_run(runs, "other", ["batch.size=512"], 80.0, 10, 512)
    for target, n in ((runs / "twin", 1), (runs, 2)):
        out = tmp_path / f"r{n}"
        res = CliRunner().invoke(app, ["report", str(target), "--out", str(out)])
        assert res.exit_code == 0, res.output
        rows = list(csv.DictReader((out / "report.csv").open()))
        assert len(rows) == n, rows
    assert [r.name for r in R.collect(runs / "twin")] == ["twin"]


def test_overlapping_pictures_stay_readable(tmp_path, monkeypatch):
    """updates_vs_batch dodges methods with equal counts (FB on BL); accuracy_vs_updates
    draws one mean line per method with a min-max band over seeds, not a line per seed."""
    import matplotlib.pyplot as plt

    runs = tmp_path / "s" / "runs"
    fb = ["schedule.method=fb", "schedule.ref_batch=32"]
    for seed, acc in ((0, 80.0), (1, 84.0)):
        common = ["batch.size=256", f"train.seed={seed}"]
        _write_run(runs, f"bl-s{seed}", common, acc, 30, 256)
        _write_run(runs, f"fb-s{seed}", [*common, *fb], acc, 30, 256)
    recs = R.collect(tmp_path / "s")
    rows = R.table(recs)
    figs = []
    monkeypatch.setattr(draw, "save", lambda fig, path: figs.append(fig) or path)
    R.plot_updates(rows, tmp_path / "u.png")
    lines = figs[0].axes[0].lines
    assert [ln.get_ydata()[0] for ln in lines] == [30, 30]
    xs = [ln.get_xdata()[0] for ln in lines]
    assert xs[0] < 256 < xs[1] and xs[1] / xs[0] < 1.1
    R.plot_accuracy_vs(list(recs), rows, tmp_path / "a.png")
    ax = figs[1].axes[0]
    means = [ln for ln in ax.lines if len(ln.get_xdata()) == 3]  # 3 epochs (no seed lines)
    assert [ln.get_ydata().tolist() for ln in means] == [[72.0, 73.0, 82.0]] * 2
    bands = [c.get_paths()[0].vertices[:, 1] for c in ax.collections]
    assert len(bands) == 2 and all((b.min(), b.max()) == (70.0, 84.0) for b in bands)
    for fig in figs:
        plt.close(fig)


def test_growth_triggers_are_counted_per_run_and_averaged(tmp_path):
    """Hand-written growths: seed 0 grows by eigenvalue, eigenvalue_confident and duration,
    seed 1 by duration twice with one veto; a fixed 3-epoch ramp (GG-like batch increases
    without recorded growths) counts as schedule."""
    runs = tmp_path / "s" / "runs"
    _write_run(runs, "bl32", ["batch.size=32"], 90.0, 30, 32)
    absa = ["batch.size=16", "schedule.method=absa", "schedule.max_batch=256"]
    a0 = _write_run(runs, "absa-s0", absa, 91.0, 12, 256)
    a1 = _write_run(runs, "absa-s1", [*absa, "train.seed=1"], 89.0, 12, 256)
    grown = [{"trigger": t} for t in ("eigenvalue", "eigenvalue_confident", "duration")]
    _with_summary(a0, growths=grown)
    _with_summary(a1, growths=[{"trigger": "duration"}, {"trigger": "duration"}])

    def veto_once(rec):
        if rec["epoch"] == 1:
            rec["veto"] = {"rule": "noise", "trigger": "duration"}

    _with_metrics(a1, veto_once)
    ramp = ["batch.size=16", "schedule.method=gg", "schedule.max_batch=64"]
    g = _write_run(runs, "gg", ramp, 90.0, 20, 64)
    sizes = iter((16, 32, 64))
    _with_metrics(g, lambda rec: rec.update(batch_size=next(sizes)))

    assert R.growth_triggers(read._read_run(a0)) == {
        "eigenvalue": 2, "noise": 0, "duration": 1, "schedule": 0, "vetoed": 0,
    }  # fmt: skip
    rows = {r["method"]: r for r in R.table(R.collect(tmp_path / "s"))}
    ab, gg, bl = rows["absa"], rows["gg"], rows["bl"]
    assert ab["growths_eigenvalue_mean"] == 1.0 and ab["growths_duration_mean"] == 1.5
    assert ab["growths_mean"] == 2.5 and ab["vetoed_mean"] == 0.5
    assert gg["growths_schedule_mean"] == 2 and gg["growths_mean"] == 2
    assert bl["growths_mean"] == 0
    md = R.triggers_markdown(list(rows.values()))
    assert "| 256 | ABSA | 2 | 2.5 | 1 | 0 | 1.5 | 0 | 0.5 |" in md and "| 32 | BL |" not in md
    back = {r["method"]: r for r in csv.DictReader(io.StringIO(R.to_csv(list(rows.values()))))}
    assert float(back["absa"]["growths_duration_mean"]) == 1.5
    assert float(back["gg"]["growths_schedule_mean"]) == 2


def test_several_varying_keys_name_only_those_off_their_defaults(tmp_path):
    """Three ABSA groups varying in lr_scaling and lr_guard: the all-default group is plain
    ABSA, each other names only its non-default key; one varying key is always named."""
    runs = tmp_path / "s" / "runs"
    over = ["batch.size=16", "schedule.method=absa", "schedule.max_batch=256"]
    _write_run(runs, "a", over, 90.0, 10, 256)
    _write_run(runs, "b", [*over, "schedule.lr_scaling=sqrt"], 91.0, 10, 256)
    _write_run(runs, "c", [*over, "schedule.lr_guard=true"], 92.0, 10, 256)
    _write_run(runs, "bl", ["batch.size=16", "optim.lr=0.05"], 90.0, 10, 16)
    _write_run(runs, "bl2", ["batch.size=16", "optim.lr=0.1"], 90.0, 10, 16)
    cols = sorted(r["column"] for r in R.table(R.collect(tmp_path / "s")))
    assert cols == ["ABSA", "ABSA (lr_guard=True)", "ABSA (lr_scaling=sqrt)",
                    "BL (lr=0.05)", "BL (lr=0.1)"]  # fmt: skip


def test_legend_columns_fit_the_figure_width():
    # 10 labels of 40 characters at 9 pt on a 16-inch figure: (40*0.6+5)*9/72 = 3.6 in each
    assert draw.legend_columns(["x" * 40] * 10, 16.0, 9, 6) == 4
    assert draw.legend_columns(["BL", "GG"], 16.0, 9, 6) == 2  # never more than the labels
    assert (
        draw.legend_columns(["x" * 400], 4.0, 9, 6) == 1 and draw.legend_columns([], 4, 9, 6) == 1
    )
