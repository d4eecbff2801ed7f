"""Fixtures shared by the test files.

Every dataset in the tests is made here or by ``fake_cifar`` (tiny archives in the official
format); nothing needs the real CIFAR-100 archive except the tests marked ``real_data``, which
skip without it (``$CIFAR100_ARCHIVE`` or ``../shared/data/cifar-100-python.tar.gz``).
"""

import os
import sys

import numpy as np
import pytest

# The package first, as the notebooks and the CLI import it: its environment settings (oneDNN on
# every x86-64 CPU) must reach TensorFlow before any test file starts it, or this process would
# compute with other kernels than the child processes some tests compare it with.
import cifar100cnn  # noqa: E402,F401

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:  # fake_cifar and fault_injection, also for their child processes
    sys.path.insert(0, HERE)

REAL_ARCHIVE = os.environ.get("CIFAR100_ARCHIVE") or os.path.join(
    ROOT, "..", "shared", "data", "cifar-100-python.tar.gz")


@pytest.fixture
def real_archive():
    """The path of a CIFAR-100 archive (official or a faithful copy); skips the test without one."""
    if not os.path.isfile(REAL_ARCHIVE):
        pytest.skip("needs the CIFAR-100 archive ($CIFAR100_ARCHIVE or ../shared/data)")
    return REAL_ARCHIVE


@pytest.fixture
def tiny_dataset():
    """A factory: ``tiny_dataset(n_train=300, n_test=50, seed=0)`` is a synthetic ``Dataset``
    split the original way (first 80% training, last 20% validation)."""
    from cifar100cnn import data

    def make(n_train=300, n_test=50, seed=0):
        return data.synthetic_dataset(n_train, n_test, seed=seed, source="synthetic (test)")

    return make


@pytest.fixture
def small_model():
    """A factory: ``small_model(input_shape=(32, 32, 3), classes=100, seed=0)``, a model of
    a few hundred weights (rescaling, one strided conv, pooling, softmax)."""
    import keras

    def make(input_shape=(32, 32, 3), classes=100, seed=0):
        keras.utils.set_random_seed(seed)
        inputs = keras.Input(shape=input_shape)
        x = keras.layers.Rescaling(1 / 255)(inputs)
        x = keras.layers.Conv2D(4, 3, strides=4)(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))

    return make


@pytest.fixture
def images():
    """Six random uint8 images of shape (32, 32, 3)."""
    return np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """``tmp_path`` with a ``cache`` folder for archives and the working directory moved to
    ``cwd/inner`` inside it; ``$CIFAR100_ARCHIVE`` unset."""
    (tmp_path / "cache").mkdir()
    cwd = tmp_path / "cwd" / "inner"
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("CIFAR100_ARCHIVE", raising=False)
    return tmp_path


@pytest.fixture
def script_result():
    """A function: ``script_result(source, timeout, **env)`` runs ``source`` in a fresh
    interpreter (``python -c``, in the repository root, the package on the path, TensorFlow's
    logging quiet, ``env`` added) and returns the JSON its ``RESULT `` line printed; the test
    fails with the script's output when it printed none (``script_result.run_script``)."""
    from script_result import run_script

    return run_script
