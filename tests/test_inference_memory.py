"""Out-of-memory fallback on every backend: the batch is halved on TensorFlow's, JAX/XLA's and
PyTorch's out-of-memory errors (injected here), and any other error is raised at once."""

import importlib.util
import os

import numpy as np
import pytest

from cifar100cnn import hardware, inference


class XlaRuntimeError(RuntimeError):
    """Named as jaxlib's runtime error, for machines without JAX."""


def tensorflow_error():
    import tensorflow as tf

    return tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")


def jax_error():
    import jax

    return jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4.0GiB")


def torch_error():
    import torch

    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


ERRORS = {
    "tensorflow": (tensorflow_error, "tensorflow"),
    "jax": (jax_error, "jax"),
    "torch": (torch_error, "torch"),
    "xla-named": (lambda: XlaRuntimeError("RESOURCE_EXHAUSTED: out of memory on device"), None),
}


class Limited:
    """A stand-in model that raises ``error()`` on batches larger than ``limit``."""

    def __init__(self, error, limit):
        self.error, self.limit, self.calls = error, limit, []

    def __call__(self, batch, training=False):
        assert training is False
        self.calls.append(len(batch))
        if len(batch) > self.limit:
            raise self.error()
        return np.repeat(batch.reshape(len(batch), -1).mean(axis=1, keepdims=True), 3, axis=1)


@pytest.mark.parametrize("backend", list(ERRORS))
def test_out_of_memory_halves_the_batch_on_every_backend(backend, capsys):
    make, module = ERRORS[backend]
    if module and importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed here")
    assert hardware.out_of_memory(make())
    x = np.random.default_rng(0).integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
    model = Limited(make, limit=30)
    out = inference.predict_in_batches(model, x, batch_size=100)
    np.testing.assert_allclose(out[:, 0], x.reshape(100, -1).mean(axis=1), rtol=1e-6)
    assert model.calls[:3] == [100, 50, 25] and max(model.calls[2:]) <= 25
    assert "Out of memory; retrying with batches of 25" in capsys.readouterr().out


@pytest.mark.parametrize("error", [ValueError("bad shape"), RuntimeError("INTERNAL: no kernel"),
                                   XlaRuntimeError("INVALID_ARGUMENT: wrong rank"), MemoryError(),
                                   ValueError("RESOURCE_EXHAUSTED in a user's message")])
def test_other_errors_are_raised_at_once(error):
    model = Limited(lambda: error, limit=0)
    assert not hardware.out_of_memory(error)
    with pytest.raises(type(error)):
        inference.predict_in_batches(model, np.zeros((8, 32, 32, 3), np.uint8), batch_size=8)
    assert model.calls == [8]


def test_out_of_memory_at_batch_one_is_raised_not_looped():
    model = Limited(lambda: XlaRuntimeError("RESOURCE_EXHAUSTED: out of memory"), limit=0)
    with pytest.raises(XlaRuntimeError):
        inference.predict_in_batches(model, np.zeros((5, 32, 32, 3), np.uint8), batch_size=8)
    assert model.calls == [5, 4, 2, 1]


def test_progress_bars_follow_tqdm_disable_as_in_the_run_commands_kernels(tmp_path):
    """The run command turns progress bars off in its kernels ($TQDM_DISABLE): predictions
    must not force them back on, or every executed copy fills with progress lines."""
    import subprocess
    import sys

    script = ("import numpy as np, keras\n"
              "from cifar100cnn import inference\n"
              "model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])\n"
              "inference.predict_raw(model, np.zeros((6, 4), 'float32'), 3, 'predict')\n")
    env = dict(os.environ, TQDM_DISABLE="1")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "predict:" not in done.stderr and "img/s" not in done.stderr
