"""benchmarks/gpu_pipeline.py: its report from a run's files, and its --dry form end to end."""

import json
import os
import subprocess
import sys
import tarfile

import keras
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import gpu_pipeline  # noqa: E402


def write_history(folder, stem, seconds):
    with open(os.path.join(folder, f"{stem}.history.json"), "w") as f:
        json.dump({"loss": [1.0] * len(seconds), "seconds": seconds}, f)


def test_model_timings_come_from_the_history_files(tmp_path):
    write_history(tmp_path, "cifar100_third_cnn", [30.0, 2.0, 4.0, 3.0])
    write_history(tmp_path, "cifar100_basic_cnn", [5.0])
    timings = gpu_pipeline.model_timings(str(tmp_path))
    assert timings["third"] == {"epochs": 4, "train_s": 39.0, "first_epoch_s": 30.0,
                                "epoch_s": 3.0}  # the median without the compiling epoch
    assert timings["baseline"]["epoch_s"] == 5.0 and set(timings) == {"third", "baseline"}


def test_test_results_and_the_markdown_table(tmp_path):
    (tmp_path / "results.csv").write_text("model,top1,top5,params\nthird,0.7312,0.92,4657464\n")
    test = gpu_pipeline.test_results(str(tmp_path))
    assert test == {"third": {"top1": 0.7312, "top5": 0.92}}
    report = {"device": "NVIDIA H200", "data": "CIFAR-100", "backend": "jax",
              "precision": "mixed_bfloat16", "hardware": "JAX", "command": "-m cifar100cnn run",
              "wall_s": 400.0, "status": 0, "vgg16_skipped": True,
              "notebooks": {"ThirdModel.ipynb": 120},
              "models": {"third": {"epochs": 16, "train_s": 40.0, "first_epoch_s": 9.0,
                                   "epoch_s": 2.0}}, "test": test, "versions": {"jax": "0.11"}}
    page = gpu_pipeline.markdown(report)
    assert "| third | 16 | 40.0 | 9.0 | 2.0 | 0.7312 | 0.92 |" in page
    assert "| ThirdModel.ipynb | 120 |" in page and "VGG16 not retrained" in page
    report["test"]["vgg16"] = {"top1": 0.5}
    assert "| vgg16 | not retrained |  |  |  | 0.5 |  |" in gpu_pipeline.markdown(report)


def test_models_older_than_the_run_are_not_timed(tmp_path):
    write_history(tmp_path, "cifar100_vgg16_cnn", [9.0])
    os.utime(tmp_path / "cifar100_vgg16_cnn.history.json", (1000, 1000))  # a committed copy
    write_history(tmp_path, "cifar100_third_cnn", [9.0])
    assert list(gpu_pipeline.model_timings(str(tmp_path), since=2000)) == ["third"]


def test_the_fake_archive_has_the_official_layout(tmp_path):
    from cifar100cnn import data

    path = gpu_pipeline.write_fake_archive(str(tmp_path / "fake.tar.gz"), n_train=10, n_test=4)
    with tarfile.open(path) as tar:
        assert {m.name for m in tar.getmembers()} == set(data.ARCHIVE_MEMBERS)
    arrays = data.read_archive(path, verify=False)
    assert arrays["x_train"].shape == (10, 32, 32, 3) and arrays["x_test"].dtype == "uint8"


def test_without_dry_the_vgg16_weights_point_nowhere_so_vgg16_is_skipped(tmp_path):
    args = gpu_pipeline.parse_args(["--out", str(tmp_path), "--archive", "a.tar.gz"])
    command = gpu_pipeline.pipeline_command(args, str(tmp_path), "a.tar.gz")
    weights = command[command.index("--vgg16-weights") + 1]
    assert not os.path.exists(weights) and "--retrain" in command and "--quick" not in command
    assert "--notebooks" not in command  # all four
    args = gpu_pipeline.parse_args(["--out", str(tmp_path), "--dry", "--notebooks", "A.ipynb"])
    command = gpu_pipeline.pipeline_command(args, str(tmp_path), "a.tar.gz")
    assert command[command.index("--notebooks") + 1] == "A.ipynb" and "--quick" in command


def test_each_notebook_is_timed_from_its_start_line_even_when_the_run_fails(tmp_path):
    script = ("print('[1/2] TrainingModels.ipynb', flush=True); print('training'); "
              "print('[2/2] ThirdModel.ipynb', flush=True); raise SystemExit(3)")
    status, wall, times = gpu_pipeline.run_pipeline([sys.executable, "-c", script],
                                                    dict(os.environ), str(tmp_path / "log"))
    assert status == 3 and list(times) == ["TrainingModels.ipynb", "ThirdModel.ipynb"]
    assert all(seconds >= 0 for seconds in times.values()) and wall >= 0
    assert "training" in (tmp_path / "log").read_text()


@pytest.mark.slow
def test_dry_run_writes_the_report(tmp_path):
    """The whole pipeline in quick mode on the CPU, under this environment's backend."""
    out = tmp_path / "dry"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_pipeline.py"),
                           "--dry", "--out", str(out), "--backend", keras.config.backend()],
                          capture_output=True, text=True, timeout=1500, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "gpu_pipeline.json").read_text())
    assert report["status"] == 0 and report["backend"] == keras.config.backend()
    assert set(report["notebooks"]) == {"TrainingModels.ipynb", "ThirdModel.ipynb",
                                        "TestModels.ipynb", "VisualizeModel.ipynb"}
    assert {"baseline", "overfit", "third_original", "third"} <= set(report["models"])
    assert all(timing["epochs"] == 1 for timing in report["models"].values())
    assert 0 <= report["test"]["third"]["top1"] <= 1
    assert "NOT CIFAR-100" in report["data"] and report["vgg16_skipped"]
    assert (out / "gpu_pipeline.md").read_text().startswith("# Whole pipeline, retrained")
