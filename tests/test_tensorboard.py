"""Every training writes TensorBoard logs per model, beside models/ in a
logs/ folder that git ignores."""

import glob
import os
import subprocess

import pytest

from cifar100cnn import data, models, recipes, training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_logs_sit_beside_models_one_folder_per_model(tmp_path):
    out = tmp_path / "out"
    assert training.tensorboard_dir(out / "models" / "checkpoints" / "baseline") == str(out / "logs" / "baseline")
    assert training.tensorboard_dir(out / "models" / "checkpoints" / "vgg16_96px") == str(out / "logs" / "vgg16_96px")
    assert training.tensorboard_dir(tmp_path / "work") == str(tmp_path / "work" / "logs")


def test_git_ignores_the_logs():
    result = subprocess.run(["git", "check-ignore", "-q", "logs/baseline/train/events.out.tfevents.1"],
                            cwd=REPO, capture_output=True)
    assert result.returncode == 0


def epoch_points(folder):
    """{tag: number of points} in the event files under ``folder``."""
    import tensorflow as tf

    counts = {}
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                counts[value.tag] = counts.get(value.tag, 0) + 1
    return counts


@pytest.mark.slow
def test_training_writes_per_epoch_curves_and_a_retrain_starts_them_afresh(tmp_path):
    dataset = data.synthetic_dataset(300, 20, seed=0)
    models_dir = tmp_path / "out" / "models"
    training.train_image_model("baseline", models.build_baseline, dataset,
                               recipes.recipe("baseline", epochs=2), str(models_dir), verbose=0)
    logs = tmp_path / "out" / "logs" / "baseline"
    assert epoch_points(logs / "train")["epoch_accuracy"] == 2
    assert epoch_points(logs / "validation")["epoch_accuracy"] == 2
    training.train_image_model("baseline", models.build_baseline, dataset,
                               recipes.recipe("baseline", epochs=1), str(models_dir), verbose=0,
                               retrain=True)
    assert epoch_points(logs / "train")["epoch_accuracy"] == 1
    assert len(glob.glob(str(logs / "train" / "events.out.tfevents.*"))) == 1
