"""benchmarks/gpu_check.py — its projections and table (fast), and its
``--dry`` form end to end on a CPU (tiny synthetic data)."""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_check  # noqa: E402

from cifar100cnn.recipes import RECIPES  # noqa: E402


def measured(epoch_s=None, features_s=2.0):
    epoch_s = epoch_s or {"baseline": 1.0, "overfit": 1.5, "third_original": 2.0, "third": 4.0,
                          "vgg16": 0.1}
    rows = [dict(step="hardware", note="GPU")]
    for name, recipe in gpu_check.IMAGE_MODELS + (("vgg16", "vgg16"),):
        if name in epoch_s:
            rows.append(dict(step=f"{name}: 2 epochs", model=name, recipe=recipe,
                             epoch_s=epoch_s[name], features_s=features_s, seconds=9.0))
    return rows


def test_projection_is_recipe_epochs_times_seconds_per_epoch_plus_vgg16_features():
    pipeline, tuned = gpu_check.projections(measured(), n_train=40_000)
    expected = (RECIPES["baseline"].epochs * 1.0 + RECIPES["overfit"].epochs * 1.5
                + RECIPES["third_original"].epochs * 2.0 + RECIPES["third_tuned"].epochs * 4.0
                + RECIPES["vgg16"].epochs * 0.1 + 2.0)
    assert pipeline["seconds"] == pytest.approx(expected)
    assert pipeline["note"].endswith("goal <= 10 min: met") and "scaled" not in pipeline["note"]
    assert tuned["seconds"] == pytest.approx(RECIPES["third_tuned"].epochs * 4.0)
    assert tuned["step"] == "projected tuned third model"


def test_projection_scales_small_data_and_names_what_was_not_measured():
    rows = measured({"baseline": 1.0, "overfit": 1.0})
    (pipeline,) = gpu_check.projections(rows, n_train=4_000)
    assert pipeline["seconds"] == pytest.approx(10 * (RECIPES["baseline"].epochs
                                                      + RECIPES["overfit"].epochs))
    assert "scaled x10 to 40,000 images" in pipeline["note"]
    assert pipeline["note"].endswith("not met; not measured: third_original, third, vgg16")


def test_slow_pipeline_misses_the_goal():
    (pipeline, _) = gpu_check.projections(measured({**dict.fromkeys(
        ("baseline", "overfit", "third_original", "third"), 10.0), "vgg16": 1.0}), 40_000)
    assert pipeline["seconds"] > gpu_check.GOAL_S and "goal <= 10 min: not met" in pipeline["note"]


def test_table_has_one_line_per_row():
    rows = measured() + [dict(step="this check", seconds=1234.5)]
    lines = gpu_check.render(rows).splitlines()
    assert lines[0] == "| step | seconds | s per epoch | note |" and len(lines) == len(rows) + 2
    assert lines[2] == "| hardware |  |  | GPU |"
    assert lines[-1] == "| this check | 1,234.5 |  |  |"


def test_missing_archive_says_what_to_pass(tmp_path):
    args = gpu_check.parse_args(["--archive", str(tmp_path / "none.tar.gz")])
    with pytest.raises(SystemExit, match="Pass --archive /path/to/cifar-100-python.tar.gz, "
                                         "or --dry"):
        gpu_check.load_data(args)


@pytest.mark.slow
def test_dry_run_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "check.json"
    result = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"),
                             "--dry", "--out", str(out)], capture_output=True, text=True,
                            timeout=600, cwd=ROOT,
                            env=dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    steps = [line.split(" | ")[0][2:] for line in table[1:]]
    assert steps == ["hardware", "data", "quick pipeline, every GPU path on (XLA, augmentation in "
                     "the model, mixed_float16)", "baseline: 2 epochs", "overfit: 2 epochs",
                     "third_original: 2 epochs", "third: 2 epochs",
                     "vgg16: features + 2 head epochs",
                     "projected full default pipeline (training)", "projected tuned third model",
                     "this check"]
    assert "1 saved float32 and loaded in safe mode; no fallback" in table[3]
    rows = json.loads(out.read_text())["rows"]
    assert all(row["epoch_s"] > 0 for row in rows if "model" in row)
    assert rows[-3]["seconds"] > 0 and "not measured" not in rows[-3]["note"]
