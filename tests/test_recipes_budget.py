"""benchmarks/third_recipes.py budget: one recipe for N epochs on an archive in CIFAR-100's format,
tested once, recorded as a point of the accuracy-versus-time curve (a tiny fake archive here)."""

import json
import os
import sys

import numpy as np

import fake_cifar

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))
import third_recipes  # noqa: E402

from cifar100cnn import artifacts  # noqa: E402


def test_budget_trains_tests_and_records_one_curve_point(tmp_path, monkeypatch):
    archive = tmp_path / "cifar-100-python.tar.gz"
    arrays = fake_cifar.write_fake_archive(archive, n_train=60, n_test=30)
    out = tmp_path / "docs"
    out.mkdir()
    earlier = {"recipe": "third_resnet9", "epochs": 30, "test_top1": 0.6438, "trained_on": "x"}
    (out / "runs.json").write_text(json.dumps({"runs": [earlier]}))
    monkeypatch.setattr(third_recipes, "OUT_DIR", str(out))

    run = third_recipes.main(["budget", "--epochs", "1", "--archive", str(archive), "--no-verify",
                        "--precision", "float32", "--work", str(tmp_path / "work"), "--record"])

    model = artifacts.load_model(str(tmp_path / "work" / "cifar100_third_cnn.keras"))
    predicted = model.predict(arrays["x_test"], verbose=0).argmax(1)
    assert run["test_top1"] == round(float(np.mean(predicted == arrays["test_fine_labels"])), 4)
    assert run["recipe"] == "third_tuned" and run["epochs"] == 1
    assert "float32" in run["trained_on"] and "budget --epochs 1" in run["trained_on"]
    recorded = json.loads((out / "runs.json").read_text())["runs"]
    assert recorded == [earlier, run]
