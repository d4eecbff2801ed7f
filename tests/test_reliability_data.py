"""Issue 5, property 3 (dataset faults) and the dataset side of properties 4 and 5.

Every archive here is a tiny fake in the exact CIFAR-100 python format (tests/fake_cifar.py).
"""

import os
import socket
import sys
import warnings

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fake_cifar  # noqa: E402

from cifar100cnn import data  # noqa: E402
from cifar100cnn.data import DatasetError  # noqa: E402


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """A cache folder holding the archive, a separate working directory (cwd) inside the
    sandbox, and a before/after snapshot of the whole sandbox."""
    cache = tmp_path / "cache"
    cwd = tmp_path / "cwd" / "inner"
    cache.mkdir()
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("CIFAR100_ARCHIVE", raising=False)
    return tmp_path


def read_quietly(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return data.read_archive(path, **kwargs)


# ---------------------------------------------------------------------------
# The fake archive itself is decoded exactly (guards the other tests)
# ---------------------------------------------------------------------------

def test_fake_archive_round_trips_through_the_loader(sandbox):
    archive = sandbox / "cache" / "cifar-100-python.tar.gz"
    written = fake_cifar.write_fake_archive(archive, n_train=30, n_test=12, seed=3)
    with pytest.warns(UserWarning, match="sha256 check .* skipped"):
        (x_train, y_train), (x_test, y_test) = data.load_cifar100(archive, verify=False)
    np.testing.assert_array_equal(x_train, written["x_train"])
    np.testing.assert_array_equal(x_test, written["x_test"])
    np.testing.assert_array_equal(y_train, written["train_fine_labels"])
    np.testing.assert_array_equal(y_test, written["test_fine_labels"])
    assert x_train.dtype == np.uint8 and x_train.shape == (30, 32, 32, 3)
    with pytest.warns(UserWarning):
        (_, coarse), _ = data.load_cifar100(archive, verify=False, label_mode="coarse")
    np.testing.assert_array_equal(coarse, written["train_coarse_labels"])
    # Channel-major rows: the first 1024 bytes of a row are the red plane.
    row = fake_cifar.to_rows(written["x_train"][:1])[0]
    np.testing.assert_array_equal(row[:1024].reshape(32, 32), x_train[0, :, :, 0])


def test_environment_variable_names_the_archive(sandbox, monkeypatch):
    archive = sandbox / "cache" / "cifar-100-python.tar.gz"
    written = fake_cifar.write_fake_archive(archive, n_train=20, n_test=5)
    monkeypatch.setenv("CIFAR100_ARCHIVE", str(archive))
    with pytest.warns(UserWarning):
        (x_train, _), _ = data.load_cifar100(verify=False)
    np.testing.assert_array_equal(x_train, written["x_train"])


def test_load_dataset_reads_a_local_archive_and_splits_it(sandbox):
    archive = sandbox / "cache" / "cifar-100-python.tar.gz"
    written = fake_cifar.write_fake_archive(archive, n_train=50, n_test=10)
    with pytest.warns(UserWarning):
        dataset = data.load_dataset("cifar100", archive=archive, verify=False)
    assert (len(dataset.x_train), len(dataset.x_val), len(dataset.x_test)) == (40, 10, 10)
    np.testing.assert_array_equal(dataset.x_val, written["x_train"][40:])


# ---------------------------------------------------------------------------
# Property 3: no network, truncated archive, wrong sha256, unsafe members, wrong shapes
# ---------------------------------------------------------------------------

def test_no_network_gives_manual_download_instructions(tmp_path, monkeypatch):
    """Keras' download is attempted with the network cut off (sockets refuse to connect)."""
    import keras.src.backend.config as keras_config

    keras_home = tmp_path / "keras_home"
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(keras_home))
    monkeypatch.delenv("CIFAR100_ARCHIVE", raising=False)

    def no_network(*args, **kwargs):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(DatasetError) as caught:
        data.load_cifar100()
    message = str(caught.value)
    assert "Could not download CIFAR-100" in message and "Network is unreachable" in message
    assert data.CIFAR100_URL in message
    assert "archive=" in message and "CIFAR100_ARCHIVE" in message
    # No partial download is left in Keras' cache.
    leftovers = [name for name, size in fake_cifar.tree(keras_home).items() if size >= 0] \
        if keras_home.exists() else []
    assert leftovers == []


def test_missing_archive_file_gives_manual_download_instructions(sandbox):
    with pytest.raises(DatasetError) as caught:
        data.load_cifar100(sandbox / "cache" / "nope.tar.gz")
    assert "not found" in str(caught.value) and data.CIFAR100_URL in str(caught.value)


def test_wrong_sha256_is_refused_with_both_hashes(sandbox):
    archive = sandbox / "cache" / "cifar-100-python.tar.gz"
    fake_cifar.write_fake_archive(archive, n_train=10, n_test=5)
    before = fake_cifar.tree(sandbox)
    with pytest.raises(DatasetError) as caught:
        data.load_cifar100(archive)  # verify=True is the default
    message = str(caught.value)
    assert data.CIFAR100_SHA256 in message
    assert data.sha256_of(archive) in message
    assert "download it again" in message and "verify=False" in message
    assert fake_cifar.tree(sandbox) == before


def test_verify_can_be_turned_off_by_the_environment_as_the_message_says(sandbox, monkeypatch):
    archive = sandbox / "cache" / "cifar-100-python.tar.gz"
    written = fake_cifar.write_fake_archive(archive, n_train=10, n_test=5)
    monkeypatch.setenv("CIFAR100_VERIFY", "0")
    with pytest.warns(UserWarning, match="sha256 check .* skipped"):
        (x_train, _), _ = data.load_cifar100(archive)
    np.testing.assert_array_equal(x_train, written["x_train"])
    monkeypatch.setenv("CIFAR100_VERIFY", "1")
    with pytest.raises(DatasetError, match="sha256"):
        data.load_cifar100(archive)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_archive_is_a_clear_error(sandbox, keep):
    archive = fake_cifar.write_truncated_archive(sandbox / "cache" / "cifar-100-python.tar.gz",
                                                 n_train=200, n_test=50, keep=keep)
    before = fake_cifar.tree(sandbox)
    with pytest.raises(DatasetError, match="truncated"):
        read_quietly(archive, verify=False)
    with pytest.raises(DatasetError, match="sha256"):
        data.read_archive(archive, verify=True)
    assert fake_cifar.tree(sandbox) == before


def test_a_file_that_is_not_an_archive_is_a_clear_error(sandbox):
    path = fake_cifar.write_not_a_tar(sandbox / "cache" / "cifar-100-python.tar.gz")
    with pytest.raises(DatasetError, match="not a readable tar.gz"):
        read_quietly(path, verify=False)


def test_path_traversal_member_is_refused_and_nothing_escapes(sandbox):
    # cwd is sandbox/cwd/inner: "../escaped.txt" would land in sandbox/cwd, and
    # "../../escaped.txt" in the sandbox itself, both outside the cache.
    for target in ("../escaped.txt", "../../escaped.txt", "cifar-100-python/../../escaped.txt"):
        archive = fake_cifar.write_traversal_archive(sandbox / "cache" / "evil.tar.gz", target=target)
        before = fake_cifar.tree(sandbox)
        with pytest.raises(DatasetError, match="unsafe member path"):
            read_quietly(archive, verify=False)
        assert fake_cifar.tree(sandbox) == before
        assert not any(name.endswith("escaped.txt") for name in fake_cifar.tree(sandbox))


def test_absolute_path_member_is_refused_and_not_written(sandbox):
    target = sandbox / "outside" / "absolute.txt"
    archive = fake_cifar.write_absolute_path_archive(sandbox / "cache" / "evil.tar.gz", target)
    before = fake_cifar.tree(sandbox)
    with pytest.raises(DatasetError, match="unsafe member path"):
        read_quietly(archive, verify=False)
    assert not target.exists() and not target.parent.exists()
    assert fake_cifar.tree(sandbox) == before


def test_symlink_member_is_refused(sandbox):
    archive = fake_cifar.write_symlink_archive(sandbox / "cache" / "evil.tar.gz")
    before = fake_cifar.tree(sandbox)
    with pytest.raises(DatasetError, match="not a plain file"):
        read_quietly(archive, verify=False)
    assert fake_cifar.tree(sandbox) == before


def test_wrong_shape_pickle_is_a_clear_error(sandbox):
    archive = fake_cifar.write_wrong_shape_archive(sandbox / "cache" / "bad.tar.gz", row_length=1024)
    before = fake_cifar.tree(sandbox)
    with pytest.raises(DatasetError) as caught:
        read_quietly(archive, verify=False)
    assert "(10, 1024)" in str(caught.value) and "(N, 3072)" in str(caught.value)
    assert fake_cifar.tree(sandbox) == before


def test_labels_out_of_range_in_the_archive_are_a_clear_error(sandbox):
    archive = fake_cifar.write_bad_labels_archive(sandbox / "cache" / "bad.tar.gz", bad_label=100)
    with pytest.raises(DatasetError, match="outside 0-99"):
        read_quietly(archive, verify=False)


def test_missing_member_is_a_clear_error(sandbox):
    archive = fake_cifar.write_missing_member_archive(sandbox / "cache" / "bad.tar.gz", "test")
    with pytest.raises(DatasetError, match="missing .*cifar-100-python/test"):
        read_quietly(archive, verify=False)


def test_reading_a_good_archive_writes_nothing_to_disk(sandbox):
    archive = sandbox / "cache" / "cifar-100-python.tar.gz"
    fake_cifar.write_fake_archive(archive, n_train=20, n_test=5)
    before = fake_cifar.tree(sandbox)
    read_quietly(archive, verify=False)
    assert fake_cifar.tree(sandbox) == before


# ---------------------------------------------------------------------------
# Property 4 (dataset side): a pickle that tries to run code is refused, and runs nothing
# ---------------------------------------------------------------------------

def test_code_executing_pickle_is_refused_without_running(sandbox):
    import pickle
    import tarfile

    marker = sandbox / "pwned"
    archive = fake_cifar.write_code_execution_archive(sandbox / "cache" / "evil.tar.gz", marker)
    with pytest.raises(DatasetError, match="refusing to load posix.system|refusing to load nt.system"):
        read_quietly(archive, verify=False)
    assert not marker.exists()
    # The fake is really dangerous: a naive pickle.load runs the command.
    with tarfile.open(archive) as tar:
        payload = tar.extractfile("cifar-100-python/train").read()
    pickle.loads(payload, encoding="bytes")
    assert marker.exists()


# ---------------------------------------------------------------------------
# Property 5 (dataset side): bad arguments -> ValueError naming the expected value
# ---------------------------------------------------------------------------

def test_unknown_data_source_and_label_mode():
    with pytest.raises(ValueError, match=r"unknown data source 'imagenet'.*'cifar100', 'synthetic'"):
        data.load_dataset("imagenet")
    with pytest.raises(ValueError, match="'fine' or 'coarse'"):
        data.load_cifar100(label_mode="medium")


@pytest.mark.parametrize("n_train, n_test", [(0, 10), (10, 0), (-5, 10), (2.5, 10)])
def test_empty_or_negative_synthetic_sizes(n_train, n_test):
    with pytest.raises(ValueError, match="positive integer"):
        data.make_synthetic(n_train, n_test)


@pytest.mark.parametrize("images, expected", [
    (np.zeros((4, 32, 32), np.uint8), r"shape \(N, 32, 32, 3\)"),
    (np.zeros((4, 3, 32, 32), np.uint8), r"shape \(N, 32, 32, 3\)"),
    (np.zeros((4, 28, 28, 3), np.uint8), r"shape \(N, 32, 32, 3\)"),
    (np.zeros((0, 32, 32, 3), np.uint8), "empty"),
    (np.zeros((4, 32, 32, 3), np.float64), "uint8"),
    (np.zeros((4, 32, 32, 3), np.int32), "uint8"),
    (np.full((4, 32, 32, 3), 0.5, np.float32), "0-255"),
    (np.full((4, 32, 32, 3), 300.0, np.float32), "0-255"),
    (np.full((4, 32, 32, 3), -1.0, np.float32), "0-255"),
    ([[0] * 3072], "numpy array"),
])
def test_bad_images_are_refused(images, expected):
    with pytest.raises(ValueError, match=expected):
        data.check_images(images, "x")
    if isinstance(images, np.ndarray) and images.ndim == 4 and len(images):
        with pytest.raises(ValueError, match=expected):
            data.make_pipeline(images, np.zeros(len(images), np.int64))


def test_float_images_in_0_255_are_accepted():
    data.check_images(np.full((2, 32, 32, 3), 200.0, np.float32))


@pytest.mark.parametrize("labels, expected", [
    (np.array([0, 1, 100, 3]), r"0\.\.99"),
    (np.array([0, -1, 2, 3]), r"0\.\.99"),
    (np.array([0.0, 1.0, 2.0, 3.0]), "integer"),
    (np.array([0, 1, 2]), r"shape \(4,\)"),
    (np.zeros((4, 1), np.int64), r"shape \(4,\)"),
])
def test_bad_labels_are_refused(labels, expected):
    images = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match=expected):
        data.check_labels(labels, 4)
    with pytest.raises(ValueError, match=expected):
        data.make_pipeline(images, labels)


def test_bad_batch_size_and_split():
    images = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        data.make_pipeline(images, np.zeros(4, np.int64), batch_size=0)
    with pytest.raises(ValueError, match="0 < val_fraction < 1"):
        data.split_train_val(images[:1], np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="0 < val_fraction < 1"):
        data.split_train_val(images, np.zeros(4, np.int64), val_fraction=1.0)
