"""benchmarks/bench.py: the report renders from given measurements (no timing here), the
estimates scale them as documented, and the report file is written only with --write."""

import ast
import importlib
import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import bench  # noqa: E402
import bench_estimate  # noqa: E402
import bench_report  # noqa: E402


def _importable(module, name):
    """Whether ``from module import name`` works: an attribute, or a submodule of a package."""
    parent = importlib.import_module(module)
    return hasattr(parent, name) or (hasattr(parent, "__path__")
                                     and importlib.util.find_spec(f"{module}.{name}") is not None)


def test_every_package_name_the_measurements_import_exists():
    """The measurements import the package inside functions; a moved name would only fail
    hours into a benchmark run."""
    path = os.path.join(ROOT, "benchmarks", "bench_measure.py")
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    imported = [(node.module, alias.name) for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cifar100cnn")
                for alias in node.names]
    assert len(imported) > 10
    missing = [f"{module}.{name}" for module, name in imported if not _importable(module, name)]
    assert missing == []


def phases(train, val, callbacks):
    return dict(train=train, val=val, callbacks=callbacks)


def model(name, epochs, train_s, flops, n_train=4_000):
    return dict(name=name, epochs=epochs, phases=phases(train_s, 0.5, 0.2), n_train=n_train,
                n_val=n_train // 4, infer_ips=2_000.0, predict_ips=2_500.0, forward_flops=flops)


def fake_measurements():
    """What ``bench_measure.measure_all`` returns, with round numbers."""
    third = model("third_tuned", 16, 4.0, 100e6, n_train=1_000)
    return dict(
        context=dict(date="2026-01-01", command="python benchmarks/bench.py --quick", mode="quick",
                     machine="Test CPU, 2 CPU cores, 8 GiB RAM, no GPU", libraries="Python 3",
                     hardware="CPU only", gpus=[], cores=2, repeats=3, infer=1_000,
                     vgg_infer=500, load=(0.5, 1.25), elapsed=200.0),
        peak=dict(matmul=100e9, conv=120e9, dtype="float32", matmul_n=2048),
        vgg=dict(n_train=1_000, n_val=250, n_extract=2_000, epochs=100,
                 original=phases(5.0, 1.25, 1.0), extract=10.0, extract_predict=8.0,
                 head=phases(2.0, 0.5, 0.1), head_before=phases(3.0, 0.8, 0.1)),
        aug=dict(n=6_000, legacy_name="NumPy/SciPy equivalent of ImageDataGenerator",
                 legacy_ips=2_500.0, ours_ips=17_500.0, before_ips=8_000.0),
        memory={"original": dict(baseline=750.0, peak=2_350.0, data=1_600.0),
                "ours": dict(baseline=750.0, peak=950.0, data=200.0),
                "ours, arrays only": dict(baseline=750.0, peak=930.0, data=180.0)},
        models=[model("baseline", 30, 2.0, 5e6), model("overfit", 100, 3.0, 12e6),
                model("third_original", 30, 3.0, 11e6), third],
        vgg_infer=dict(infer_ips=150.0, predict_ips=160.0, forward_flops=630e6, head_flops=1e6),
        variants={"package (float32)": dict(third, package=True, narrow=False),
                  "widths=(64, 128, 256)": dict(third, phases=phases(1.0, 0.5, 0.2),
                                                package=False, narrow=True)},
        cli=dict(seconds=None, note="skipped in --quick mode"),
        full=None)


def test_estimates_scale_the_samples_to_the_full_split():
    e = bench_estimate.estimate(fake_measurements())
    # baseline: 2.0 s on 4,000 + 0.5 s on 1,000 images, 0.2 s of callbacks -> 20 + 5 + 0.2 s
    baseline = e["models"][0]
    assert baseline["epoch_s"] == pytest.approx(25.2) and baseline["train_ips"] == 2_000
    assert e["parts"][0] == ("baseline: 30 epochs", pytest.approx(30 * 25.2))
    # VGG16: the original's epoch 5.0 x 40 + 1.25 x 40 + 1.0; ours: 50,000 x 10/2,000 s once
    assert e["vgg"]["original"]["epoch_s"] == pytest.approx(251.0)
    assert e["vgg"]["ours_stage_s"] == pytest.approx(250.0 + 100 * 2.6)
    # The option column swaps in the narrower third_tuned (1.0 s on 1,000 images) only.
    assert e["option"] == "widths=(64, 128, 256)"
    third, option = e["parts"][3][1], e["parts_option"][3][1]
    assert third == pytest.approx(16 * (160 + 20 + 0.2)) and option == pytest.approx(16 * (40 + 20 + 0.2))
    assert e["total"] - e["total_option"] == pytest.approx(third - option)
    assert e["peak"] == 120e9 and e["floor"] == pytest.approx(sum(e["flops"]) / 120e9)


def test_the_report_renders_from_given_measurements():
    report = bench_report.render(fake_measurements())
    assert "$" not in report
    assert report.startswith("# Benchmarks: the original project's way vs this package\n")
    for section in ("## Summary", "## 1. VGG16", "## 2. Augmentation", "## 3. Peak memory",
                    "## 4. Training", "## 5. The whole pipeline", "## 6. The compute floor"):
        assert f"\n{section}" in report
    assert "- Command: `python benchmarks/bench.py --quick` (quick mode)" in report
    assert "load average (1 min) 0.50 at the start, 1.25 at the end, on 2 cores" in report
    assert ("| Augmentation input pipeline (images/s) | 2,500 | 17,500 | 7.0× | "
            "3.2× (three Keras layers) | ≥ 5× — met |") in report
    assert ("| Peak RSS added by the data (MiB) | 1,600 | 200 | 0.12× | arrays alone: 0.11× "
            "| ≤ 0.25× — met |") in report
    assert "| Original: train phase | 1000 images | 5.00 | 200 | 3.3 min |" in report
    assert "| baseline: 30 epochs | 12.6 min | 12.6 min |" in report
    assert "| third_tuned: 16 epochs | 48.1 min | 16.1 min |" in report
    assert "With third_tuned widths=(64, 128, 256) (option)" in report
    assert "| *option: third_tuned, widths=(64, 128, 256)* | 16 | 1,000 | 1,000 |" in report
    assert "skipped in --quick mode." in report
    assert "a 2048² matmul 100 GFLOP/s, a batch of 3×3 convolutions 120 GFLOP/s" in report
    assert report.endswith("%** |\n")


@pytest.fixture
def fake_run(monkeypatch, tmp_path):
    """bench.main with fake measurements and its default output in ``tmp_path``."""
    calls = []

    def measure_all(mode, command, cli_skipped=None, full_timeout=None):
        calls.append((mode, command, cli_skipped, full_timeout))
        return fake_measurements()

    monkeypatch.setattr(bench.bench_measure, "measure_all", measure_all)
    monkeypatch.setattr(bench, "DEFAULT_OUTPUT", str(tmp_path / "docs" / "BENCHMARKS.md"))
    return calls


def test_quick_prints_the_report_and_writes_no_file(fake_run, tmp_path, capsys):
    docs = os.path.join(ROOT, "docs", "BENCHMARKS.md")
    before = open(docs, encoding="utf-8").read(), os.stat(docs).st_mtime_ns
    assert bench.main(["--quick"]) == 0
    assert fake_run == [("quick", "python benchmarks/bench.py --quick",
                         bench.cli_skipped(bench.parse_args(["--quick"])), None)]
    assert "| Augmentation input pipeline (images/s) | 2,500 |" in capsys.readouterr().out
    assert not (tmp_path / "docs").exists()
    assert (open(docs, encoding="utf-8").read(), os.stat(docs).st_mtime_ns) == before


def test_write_saves_the_printed_report(fake_run, tmp_path, capsys):
    assert bench.main(["--quick", "--write"]) == 0
    written = (tmp_path / "docs" / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert written == bench_report.render(fake_measurements())
    assert written in capsys.readouterr().out
    assert fake_run[0][1] == "python benchmarks/bench.py --quick"  # --write is not shown
    other = tmp_path / "elsewhere.md"
    bench.main(["--write", str(other), "--skip-cli"])
    assert other.read_text(encoding="utf-8") == written
    assert fake_run[1][:3] == ("full", "python benchmarks/bench.py --skip-cli", "skipped (--skip-cli)")
