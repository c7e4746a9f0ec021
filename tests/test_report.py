import csv
import io
import json
import math

import pytest
import yaml
from rich.console import Console

from absa import config as C
from absa import report as R

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
    assert names == ["accuracy_vs_batch.png", "trajectories.png", "updates_vs_batch.png"]
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
