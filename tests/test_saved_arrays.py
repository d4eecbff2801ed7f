"""The arrays the pipeline saves and loads: uint8 images and int64 labels of the right shapes,
from the archive loader, the synthetic data and the test arrays written for the evaluation
notebooks (read back here with plain ``np.load``, not through the package's loader)."""

import json
import os

import numpy as np
import pytest

from cifar100cnn import artifacts, data, evaluation
from fake_cifar import write_fake_archive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def assert_images_and_labels(x, y, n):
    assert x.dtype == np.uint8 and x.shape == (n, 32, 32, 3)
    assert y.dtype == np.int64 and y.shape == (n,)


def assert_saved_test_arrays(arrays_dir, dataset):
    x = np.load(os.path.join(arrays_dir, artifacts.X_TEST_FILE), allow_pickle=False)
    y = np.load(os.path.join(arrays_dir, artifacts.Y_TEST_FILE), allow_pickle=False)
    assert_images_and_labels(x, y, len(dataset.x_test))
    np.testing.assert_array_equal(x, dataset.x_test)
    np.testing.assert_array_equal(y, dataset.y_test)


@pytest.mark.filterwarnings("ignore:sha256 check")
def test_archive_and_synthetic_datasets_hold_uint8_images_and_int64_labels(tmp_path):
    arrays = write_fake_archive(tmp_path / "cifar-100-python.tar.gz", n_train=50, n_test=20)
    loaded = data.load_dataset("cifar100", archive=str(tmp_path / "cifar-100-python.tar.gz"),
                               verify=False)
    synthetic = data.load_dataset("synthetic", quick=True)
    for dataset, n_train, n_test in ((loaded, 50, 20), (synthetic, 2000, 500)):
        n_val = n_train // 5
        assert_images_and_labels(dataset.x_train, dataset.y_train, n_train - n_val)
        assert_images_and_labels(dataset.x_val, dataset.y_val, n_val)
        assert_images_and_labels(dataset.x_test, dataset.y_test, n_test)
    np.testing.assert_array_equal(loaded.x_test, arrays["x_test"])


def test_saved_test_arrays_keep_uint8_images_and_int64_labels(tmp_path, tiny_dataset):
    dataset = tiny_dataset(n_train=50, n_test=30)
    artifacts.save_test_arrays(dataset.x_test, dataset.y_test, str(tmp_path))
    assert_saved_test_arrays(str(tmp_path), dataset)
    x, y = artifacts.load_test_arrays(str(tmp_path))
    assert_images_and_labels(x, y, 30)


def test_evaluation_writes_the_test_split_as_uint8_when_training_did_not(tmp_path):
    assert evaluation.ensure_test_arrays(str(tmp_path), data_source="synthetic", quick=True)
    assert_saved_test_arrays(str(tmp_path / "arrays"), data.load_dataset("synthetic", quick=True))


def test_training_notebook_saves_the_test_split_unchanged(tmp_path, tiny_dataset):
    with open(os.path.join(ROOT, "TrainingModels.ipynb")) as handle:
        cells = ["".join(c["source"]) for c in json.load(handle)["cells"] if c["cell_type"] == "code"]
    saving = [cell for cell in cells if "save_test_arrays" in cell]
    assert len(saving) == 1
    dataset = tiny_dataset(n_train=50, n_test=30)
    exec(saving[0], {"artifacts": artifacts, "dataset": dataset, "arrays_dir": str(tmp_path)})
    assert_saved_test_arrays(str(tmp_path), dataset)


@pytest.mark.parametrize("dtype", ["float64", "object"])
def test_arrays_that_would_bloat_or_run_code_are_refused(tmp_path, dtype):
    with pytest.raises(ValueError, match="refusing to save"):
        artifacts.save_array(np.zeros((2, 32, 32, 3), dtype), str(tmp_path / "x.npy"))
    assert not os.listdir(tmp_path)
