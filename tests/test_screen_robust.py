"""benchmarks/screen_robust.py: candidates are recipe overrides, trained through the package's
own training path, measured on validation images only and appended to the results file."""

import dataclasses
import json
import os
import sys

import pytest

from cifar100cnn import artifacts, data

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))
import screen_robust  # noqa: E402


def test_overrides_take_the_types_of_the_recipe_fields():
    assert screen_robust.parse_overrides("corruption=noise10,whiten_eps=0.01,epochs=3,widths=8/16/32") == {
        "corruption": "noise10", "whiten_eps": 0.01, "epochs": 3, "widths": (8, 16, 32)}
    assert screen_robust.parse_overrides("-") == {}
    assert screen_robust.parse_overrides("alternating_flips=true,input_norm=image") == {
        "alternating_flips": True, "input_norm": "image"}
    assert screen_robust.parse_overrides("alternating_flips=False") == {"alternating_flips": False}
    with pytest.raises(SystemExit, match="unknown recipe field 'whiten_epz'"):
        screen_robust.parse_overrides("whiten_epz=0.01")


def test_candidates_train_apart_are_measured_on_validation_and_appended(tmp_path, monkeypatch):
    made = data.synthetic_dataset

    def without_test_images(*args, **kwargs):  # the screen must not need the test set
        return dataclasses.replace(made(*args, **kwargs), x_test=None, y_test=None)

    monkeypatch.setattr(screen_robust.data, "synthetic_dataset", without_test_images)
    trained_with, train = [], screen_robust.training.train_image_model

    def train_and_note_the_seed(*args, **kwargs):
        trained_with.append(kwargs["seed"])
        return train(*args, **kwargs)

    monkeypatch.setattr(screen_robust.training, "train_image_model", train_and_note_the_seed)
    out, work = tmp_path / "robust.json", tmp_path / "work"
    out.write_text(json.dumps([{"candidate": "earlier"}]))
    screen_robust.main(["--synthetic", "300", "--epochs", "1", "--subset", "40", "--work", str(work),
                        "--out", str(out), "--seeds", "3", "input_norm=image,corruption=noise10,widths=8/16/32"])
    earlier, result = json.loads(out.read_text())
    assert earlier == {"candidate": "earlier"}
    assert result["overrides"] == {"input_norm": "image", "corruption": "noise10",
                                   "widths": [8, 16, 32], "epochs": 1}
    assert len(result["val_curve"]) == 1 and 0 <= result["val_top1"] <= 1
    assert set(result["per_corruption"]) == {"gaussian_noise", "gaussian_blur", "defocus_blur",
                                             "contrast", "brightness", "jpeg_compression", "pixelate"}
    assert result["test_set_used"] is False and result["training_minutes"] >= 0
    assert result["seed"] == 3 and trained_with == [3]  # the seed reaches the training
    folder = work / "input_norm_image_corruption_noise10_widths_8_16_32_epochs_1_seed3"
    saved = artifacts.load_model(artifacts.model_path("third", str(folder)))
    assert "standardize_image" in {layer.name for layer in saved.layers}
    assert saved.count_params() < 100_000  # the widths reached the build
    assert os.path.exists(os.path.join(folder, "cifar100_third_cnn.trained.json"))
