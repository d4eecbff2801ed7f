"""Dataset faults: no network, missing, truncated, tampered or unsafe archives, pickles that
try to run code, and bad arguments or arrays (ValueError naming the expected value).

Every archive here is a tiny fake in the exact CIFAR-100 python format (tests/fake_cifar.py).
"""

import re
import socket
import tarfile
import warnings

import numpy as np
import pytest

import fake_cifar
from cifar100cnn import data
from cifar100cnn.data import DatasetError


def make_pipeline(*args, **kwargs):
    """``tf_pipeline.make_pipeline``: tf.data is TensorFlow's (the test skips without it)."""
    return pytest.importorskip("cifar100cnn.tf_pipeline").make_pipeline(*args, **kwargs)


def read_quietly(path, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return data.read_archive(path, **kwargs)


# ---------------------------------------------------------------------------
# The fake archive itself is decoded exactly (guards the other tests)
# ---------------------------------------------------------------------------

def test_fake_archive_is_pickled_as_the_official_one():
    """The official members are Python 2 pickles whose image array is rebuilt by
    ``numpy.core.multiarray._reconstruct``; the loader must accept exactly that name."""
    members = fake_cifar.archive_members(fake_cifar.make_arrays(3, 2))
    train = members["cifar-100-python/train"]
    assert train.startswith(b"\x80\x02}")  # protocol 2, a dict
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in train and b"numpy._core" not in train
    assert b"cnumpy\ndtype\n" in train and b"U\x0bfine_labels" in train  # Python 2 str keys
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":  # NumPy 1.x still pickles numpy.core
        modern = fake_cifar.archive_members(fake_cifar.make_arrays(3, 2), layout="python3")
        assert b"numpy._core.multiarray" in modern["cifar-100-python/train"]


@pytest.mark.parametrize("layout", ["python2", "python3"])
def test_fake_archive_round_trips_through_the_loader(sandbox, layout):
    archive = sandbox / "cache" / "cifar-100-python.tar.gz"
    written = fake_cifar.write_fake_archive(archive, n_train=30, n_test=12, seed=3, layout=layout)
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

@pytest.fixture
def keras_cache(tmp_path, monkeypatch):
    """Keras' download cache moved to an existing, writable folder of the test (Keras falls
    back to /tmp/.keras when its folder is not writable, or does not exist)."""
    import keras.src.backend.config as keras_config

    home = tmp_path / "keras_home"
    home.mkdir()
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(home))
    monkeypatch.delenv("CIFAR100_ARCHIVE", raising=False)
    return home


def test_no_network_gives_manual_download_instructions(keras_cache, monkeypatch):
    """Keras' download is attempted with the network cut off (sockets refuse to connect)."""

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
    # One message, not a chain of tracebacks.
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    # Keras used the test's cache folder (so that the next check looks at the right place).
    assert (keras_cache / "datasets").is_dir()


def test_a_download_cut_midway_leaves_no_partial_file(keras_cache, monkeypatch):
    from keras.src.utils import file_utils

    started = []

    def cut_midway(url, filename, reporthook=None):
        with open(filename, "wb") as handle:  # half an archive, then the connection drops
            handle.write(b"\x1f\x8b" + b"\0" * 1000)
        started.append(filename)
        raise ConnectionResetError(104, "Connection reset by peer")

    monkeypatch.setattr(file_utils, "urlretrieve", cut_midway)
    with pytest.raises(DatasetError, match="Connection reset by peer"):
        data.load_cifar100()
    assert started and started[0].startswith(str(keras_cache / "datasets"))
    assert list((keras_cache / "datasets").iterdir()) == []


def test_missing_archive_file_gives_manual_download_instructions(sandbox):
    with pytest.raises(DatasetError) as caught:
        data.load_cifar100(sandbox / "cache" / "nope.tar.gz")
    message = str(caught.value)
    assert "not found" in message and data.CIFAR100_URL in message
    assert "CIFAR100_ARCHIVE" in message


def test_wrong_sha256_is_refused_with_both_hashes(sandbox):
    archive = sandbox / "cache" / "cifar-100-python.tar.gz"
    fake_cifar.write_fake_archive(archive, n_train=10, n_test=5)
    with pytest.raises(DatasetError) as caught:
        data.load_cifar100(archive)  # verify=True is the default
    message = str(caught.value)
    assert data.CIFAR100_SHA256 in message
    assert data.sha256_of(archive) in message
    assert "download it again" in message and "verify=False" in message


def test_verify_can_be_turned_off_as_the_message_says(sandbox, monkeypatch):
    archive = sandbox / "cache" / "cifar-100-python.tar.gz"
    written = fake_cifar.write_fake_archive(archive, n_train=10, n_test=5)
    with pytest.warns(UserWarning, match="sha256 check .* skipped"):
        (x_train, _), _ = data.load_cifar100(archive, verify=False)
    np.testing.assert_array_equal(x_train, written["x_train"])
    # CIFAR100_VERIFY=0 is read by the notebooks and CLIs (environment.archive_settings),
    # never by the library: there the argument decides.
    monkeypatch.setenv("CIFAR100_VERIFY", "0")
    with pytest.raises(DatasetError, match="sha256") as caught:
        data.load_cifar100(archive)
    assert "verify_archive=False" in str(caught.value) and "CIFAR100_VERIFY=0" in str(caught.value)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9])
def test_truncated_archive_is_a_clear_error(sandbox, keep):
    archive = fake_cifar.write_truncated_archive(sandbox / "cache" / "cifar-100-python.tar.gz",
                                                 n_train=200, n_test=50, keep=keep)
    with pytest.raises(DatasetError, match="truncated"):
        read_quietly(archive, verify=False)
    with pytest.raises(DatasetError, match="sha256"):
        data.read_archive(archive, verify=True)


def test_a_file_that_is_not_an_archive_is_a_clear_error(sandbox):
    path = fake_cifar.write_not_a_tar(sandbox / "cache" / "cifar-100-python.tar.gz")
    with pytest.raises(DatasetError, match="not a readable tar.gz"):
        read_quietly(path, verify=False)


# The archive is read in memory and never extracted (test_reading_never_extracts_to_disk),
# so these refusals are about the message: the loader names the member it refuses.

@pytest.mark.parametrize("target", ["../escaped.txt", "../../escaped.txt",
                                    "cifar-100-python/../../escaped.txt"])
def test_path_traversal_member_is_refused(sandbox, target):
    archive = fake_cifar.write_traversal_archive(sandbox / "cache" / "evil.tar.gz", target=target)
    with pytest.raises(DatasetError, match=re.escape(f"unsafe member path {target!r}")):
        read_quietly(archive, verify=False)


def test_absolute_path_member_is_refused(sandbox):
    target = sandbox / "outside" / "absolute.txt"
    archive = fake_cifar.write_absolute_path_archive(sandbox / "cache" / "evil.tar.gz", target)
    with pytest.raises(DatasetError, match="unsafe member path"):
        read_quietly(archive, verify=False)


def test_symlink_member_is_refused(sandbox):
    archive = fake_cifar.write_symlink_archive(sandbox / "cache" / "evil.tar.gz")
    with pytest.raises(DatasetError, match="'cifar-100-python/link', which is not a plain file"):
        read_quietly(archive, verify=False)


def test_wrong_shape_pickle_is_a_clear_error(sandbox):
    archive = fake_cifar.write_wrong_shape_archive(sandbox / "cache" / "bad.tar.gz", row_length=1024)
    with pytest.raises(DatasetError) as caught:
        read_quietly(archive, verify=False)
    assert "(10, 1024)" in str(caught.value) and "(N, 3072)" in str(caught.value)


def test_labels_out_of_range_in_the_archive_are_a_clear_error(sandbox):
    archive = fake_cifar.write_bad_labels_archive(sandbox / "cache" / "bad.tar.gz", bad_label=100)
    with pytest.raises(DatasetError, match="outside 0-99"):
        read_quietly(archive, verify=False)


def test_missing_member_is_a_clear_error(sandbox):
    archive = fake_cifar.write_missing_member_archive(sandbox / "cache" / "bad.tar.gz", "test")
    with pytest.raises(DatasetError, match="missing .*cifar-100-python/test"):
        read_quietly(archive, verify=False)


def test_reading_never_extracts_to_disk(sandbox, monkeypatch):
    """Members are read into memory: no tar extraction call, no file written anywhere
    (so a member with a hostile path or link has nowhere to land)."""
    archive = sandbox / "cache" / "cifar-100-python.tar.gz"
    written = fake_cifar.write_fake_archive(archive, n_train=20, n_test=5)

    def refuse(*args, **kwargs):
        raise AssertionError("the archive was extracted to disk")

    for method in ("extract", "extractall", "_extract_member", "makefile"):
        monkeypatch.setattr(tarfile.TarFile, method, refuse)
    real_open = open

    def open_for_reading_only(file, mode="r", *args, **kwargs):
        assert not set(mode) & set("wax+"), f"opened {file!r} with mode {mode!r}"
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", open_for_reading_only)
    arrays = read_quietly(archive, verify=False)
    np.testing.assert_array_equal(arrays["x_train"], written["x_train"])


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
            make_pipeline(images, np.zeros(len(images), np.int64))


def test_float_images_in_0_255_are_accepted_unchanged():
    images = np.full((2, 32, 32, 3), 200.0, np.float32)
    images[1] = 0.0
    assert data.check_images(images) is None
    batch, labels = next(iter(make_pipeline(images, np.array([3, 4]), batch_size=2)))
    np.testing.assert_array_equal(batch.numpy(), images)  # not rescaled, not cast to uint8
    assert batch.dtype.name == "float32" and labels.numpy().tolist() == [3, 4]


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
        make_pipeline(images, labels)


def test_bad_batch_size_and_split():
    images = np.zeros((4, 32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        make_pipeline(images, np.zeros(4, np.int64), batch_size=0)
    with pytest.raises(ValueError, match="0 < val_fraction < 1"):
        data.split_train_val(images[:1], np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="0 < val_fraction < 1"):
        data.split_train_val(images, np.zeros(4, np.int64), val_fraction=1.0)
