"""Data loading, the original split, synthetic data and input pipelines."""

import os

import numpy as np
import pytest

import fake_cifar
from cifar100cnn import data

REAL_ARCHIVE = os.environ.get("CIFAR100_ARCHIVE") or os.path.join(
    os.path.dirname(__file__), "..", "..", "shared", "data", "cifar-100-python.tar.gz")


def test_environment_variable_names_the_archive(tmp_path, monkeypatch):
    path = tmp_path / "local.tar.gz"
    written = fake_cifar.write_fake_archive(path, n_train=10, n_test=5)
    monkeypatch.setenv("CIFAR100_ARCHIVE", str(path))
    with pytest.warns(UserWarning):
        (x_train, _), _ = data.load_cifar100(verify=False)
    np.testing.assert_array_equal(x_train, written["x_train"])


def test_hash_mismatch_is_refused_with_instructions(tmp_path):
    path = tmp_path / "cifar-100-python.tar.gz"
    fake_cifar.write_fake_archive(path, n_train=10, n_test=5)
    with pytest.raises(data.DatasetError, match="sha256") as info:
        data.load_cifar100(path)  # verify=True by default
    assert data.CIFAR100_SHA256 in str(info.value)
    assert "verify=False" in str(info.value)


def test_missing_archive_says_how_to_get_one(tmp_path):
    with pytest.raises(data.DatasetError, match="CIFAR100_ARCHIVE"):
        data.load_cifar100(tmp_path / "nope.tar.gz")


def test_no_network_gives_one_clear_message(monkeypatch):
    import keras

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://www.cs.toronto.edu/...: None -- [Errno -3]")

    monkeypatch.delenv("CIFAR100_ARCHIVE", raising=False)
    monkeypatch.setattr(keras.datasets.cifar100, "load_data", offline)
    with pytest.raises(data.DatasetError) as info:
        data.load_cifar100()
    message = str(info.value)
    assert "Could not download" in message and "CIFAR100_ARCHIVE" in message
    assert data.CIFAR100_URL in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_label_metadata_is_consistent():
    assert len(data.FINE_LABEL_NAMES) == 100 and len(set(data.FINE_LABEL_NAMES)) == 100
    assert len(data.COARSE_LABEL_NAMES) == 20
    assert np.bincount(data.FINE_TO_COARSE, minlength=20).tolist() == [5] * 20
    assert data.COARSE_LABEL_NAMES[data.FINE_TO_COARSE[data.FINE_LABEL_NAMES.index("lion")]] == "large_carnivores"
    assert data.COARSE_LABEL_NAMES[data.FINE_TO_COARSE[data.FINE_LABEL_NAMES.index("maple_tree")]] == "trees"


def test_split_is_first_80_percent_then_last_20_without_shuffling():
    x = np.zeros((50_000, 32, 32, 3), np.uint8)
    y = np.arange(50_000) % 100
    (x_train, y_train), (x_val, y_val) = data.split_train_val(x, y)
    assert len(x_train) == 40_000 and len(x_val) == 10_000
    np.testing.assert_array_equal(y_train, y[:40_000])
    np.testing.assert_array_equal(y_val, y[40_000:])


def test_split_rejects_degenerate_input():
    with pytest.raises(ValueError):
        data.split_train_val(np.zeros((1, 32, 32, 3), np.uint8), np.zeros(1, int))
    with pytest.raises(ValueError, match="shape"):
        data.split_train_val(np.zeros((10, 28, 28, 3), np.uint8), np.zeros(10, int))


def test_synthetic_data_is_deterministic_and_cifar_shaped():
    (a_train, a_labels), (a_test, _) = data.make_synthetic(600, 200, seed=7)
    (b_train, b_labels), (b_test, _) = data.make_synthetic(600, 200, seed=7)
    (c_train, _), _ = data.make_synthetic(600, 200, seed=8)
    np.testing.assert_array_equal(a_train, b_train)
    np.testing.assert_array_equal(a_labels, b_labels)
    np.testing.assert_array_equal(a_test, b_test)
    assert not np.array_equal(a_train, c_train)
    assert a_train.dtype == np.uint8 and a_train.shape == (600, 32, 32, 3)
    assert np.bincount(a_labels, minlength=100).min() == 6  # balanced classes
    assert a_train.std() > 20  # not blank


def test_synthetic_classes_differ_in_content():
    (x, y), _ = data.make_synthetic(2000, 10, seed=0)
    means = np.stack([x[y == c].mean(axis=0) for c in range(100)])
    # class-mean images differ clearly between classes
    spread = np.abs(means[:, None] - means[None]).mean(axis=(2, 3, 4))
    assert spread[~np.eye(100, dtype=bool)].min() > 1.0


def test_load_dataset_quick_is_small_and_labelled_synthetic():
    dataset = data.load_dataset("cifar100", quick=True)
    assert dataset.source.startswith("synthetic")
    assert (len(dataset.x_train), len(dataset.x_val), len(dataset.x_test)) == (1600, 400, 500)
    assert dataset.fine_names[0].startswith("syn")
    with pytest.raises(ValueError, match="unknown data source"):
        data.load_dataset("imagenet")


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 32, 32), np.uint8), "shape"),
    (np.zeros((0, 32, 32, 3), np.uint8), "empty"),
    (np.zeros((4, 32, 32, 3), np.float64), "uint8"),
    (np.full((4, 32, 32, 3), 0.5, np.float32), "0-255"),
    ([[1, 2, 3]], "numpy array"),
])
def test_check_images_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        data.check_images(bad)


def test_pipeline_batches_uint8_and_rejects_bad_labels():
    x = np.zeros((10, 32, 32, 3), np.uint8)
    batches = list(data.make_pipeline(x, np.arange(10), batch_size=4))
    assert [len(images) for images, _ in batches] == [4, 4, 2]
    assert batches[0][0].dtype.name == "uint8"
    with pytest.raises(ValueError, match="0..99"):
        data.make_pipeline(x, np.full(10, 100))



def test_pipeline_keeps_image_label_pairs_and_reshuffles_every_epoch():
    # Image i holds the value i everywhere, its label i mod 100: pairs must survive.
    x = np.arange(250).astype(np.uint8)[:, None, None, None] * np.ones((1, 32, 32, 3), np.uint8)
    y = np.arange(250) % 100
    ds = data.make_pipeline(x, y, batch_size=64, shuffle=True, seed=1)
    epochs = []
    for _ in range(2):
        order = []
        for images, labels in ds:
            assert np.array_equal(images.numpy()[:, 0, 0, 0] % 100, labels.numpy())
            order.extend(images.numpy()[:, 0, 0, 0].tolist())
        epochs.append(order)
    assert sorted(epochs[0]) == sorted(x[:, 0, 0, 0].tolist())  # each image once per epoch
    assert epochs[0] != epochs[1]  # a fresh order every epoch
    unshuffled = np.concatenate([images.numpy() for images in data.make_pipeline(x, batch_size=64)])
    assert np.array_equal(unshuffled, x)  # without labels: the images alone, in order


def test_pipeline_reads_the_array_in_place():
    # A change to the NumPy array after building shows up in the next epoch: no copy was taken.
    x = np.zeros((8, 32, 32, 3), np.uint8)
    ds = data.make_pipeline(x, np.zeros(8, np.int64), batch_size=8)
    x[3] = 7
    images, _ = next(iter(ds))
    assert images.numpy()[3].max() == 7

@pytest.mark.real_data
@pytest.mark.skipif(not os.path.exists(REAL_ARCHIVE), reason="needs the CIFAR-100 archive")
def test_real_archive_has_the_official_order():
    with pytest.warns(UserWarning):
        (x_train, y_train), (x_test, y_test) = data.load_cifar100(REAL_ARCHIVE, verify=False)
    assert x_train.shape == (50_000, 32, 32, 3) and x_test.shape == (10_000, 32, 32, 3)
    assert y_train[:10].tolist() == [19, 29, 0, 11, 1, 86, 90, 28, 23, 31]
    assert y_test[:10].tolist() == [49, 33, 72, 51, 71, 92, 15, 14, 23, 0]
    assert x_train[:10, 0, 0, 0].tolist() == [255, 255, 250, 124, 43, 190, 50, 178, 122, 255]
    (_, y_val) = data.split_train_val(x_train, y_train)[1]
    assert data.class_count_range(y_val) == (77, 126)
