"""benchmarks/training_time.py: both third recipes go through the real training path, in
alternating order, and the report gives each one's time and the ratios (per call, and per epoch
after the first)."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import training_time  # noqa: E402
from cifar100cnn import training  # noqa: E402


@pytest.mark.slow  # two short trainings of each recipe
def test_both_recipes_train_in_turn_through_the_package_and_the_ratio_is_reported(monkeypatch, capsys):
    calls, train = [], training.train_image_model

    def spy(name, build, dataset, recipe, *args, **kwargs):
        calls.append((recipe, len(dataset.x_train), len(dataset.x_val)))
        return train(name, build, dataset, recipe, *args, **kwargs)

    monkeypatch.setattr(training, "train_image_model", spy)
    training_time.main(["--train", "64", "--val", "32", "--epochs", "2", "--rounds", "2"])
    out = capsys.readouterr().out
    flips = [recipe.alternating_flips for recipe, _, _ in calls]
    assert flips == [False, True, True, False]  # tuned, robust, then the other one first
    assert all(recipe.epochs == 2 and (n_train, n_val) == (64, 32) for recipe, n_train, n_val in calls)
    assert [recipe.input_norm for recipe, _, _ in calls] == ["dataset", "image", "image", "dataset"]
    assert "third_tuned:" in out and "third_robust:" in out
    per_call, per_epoch = [float(line.rsplit("robust / tuned:", 1)[1])
                           for line in out.splitlines() if "robust / tuned:" in line]
    assert per_call > 0 and per_epoch > 0
