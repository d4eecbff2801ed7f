"""TensorFlow only: its devices, op determinism, ``tf.distribute`` strategies and the model
wrapper that ``MultiWorkerMirroredStrategy`` training needs. Imported only when Keras runs on
TensorFlow (``hardware.tf_runtime``)."""

import contextlib

import keras
import tensorflow as tf
from tensorflow.python.framework import config as tf_config  # the flag Keras itself reads


def version():
    """TensorFlow's version."""
    return tf.__version__


def gpu_names():
    """The GPUs' names (as the driver gives them)."""
    return [tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name)
            for gpu in tf.config.list_physical_devices("GPU")]


def enable_determinism():
    """Deterministic kernels (the CPU's: on GPUs they would cost speed)."""
    tf.config.experimental.enable_op_determinism()


@contextlib.contextmanager
def xla_allowed(jit_compile):
    """Inside the block, op determinism (which ``hardware.set_seed`` turns on for CPUs) is
    off when ``jit_compile``: Keras silently drops XLA under it. Restored after the block.

    Args:
        jit_compile: whether the model in the block is compiled with XLA.
    """
    turn_off = jit_compile and tf_config.is_op_determinism_enabled()
    if turn_off:
        tf_config.disable_op_determinism()
    try:
        yield
    finally:
        if turn_off:
            tf_config.enable_op_determinism()


def current_strategy():
    """``tf.distribute.get_strategy()``."""
    return tf.distribute.get_strategy()


def mirrored_strategy(gpus, cpu_devices=1):
    """``MirroredStrategy`` over several GPUs, or over ``cpu_devices`` logical CPU devices on
    a machine without GPUs (call it before TensorFlow has run anything); else the current
    strategy.

    Args:
        gpus: how many GPUs there are.
        cpu_devices: logical CPU devices wanted without GPUs (default 1: no split).
    """
    if gpus > 1:
        return tf.distribute.MirroredStrategy()
    if not gpus and cpu_devices > 1:
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices("CPU")[0],
            [tf.config.LogicalDeviceConfiguration() for _ in range(cpu_devices)])
        return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    return tf.distribute.get_strategy()


def multi_worker():
    """Whether the current strategy is a ``MultiWorkerMirroredStrategy``."""
    return isinstance(tf.distribute.get_strategy(), tf.distribute.MultiWorkerMirroredStrategy)


class MultiWorkerTrainee(keras.Model):
    """A functional model whose ``fit`` works under ``MultiWorkerMirroredStrategy``, which
    Keras 3 alone does not manage (keras#20585):

    - Keras reduces the first batch across workers to learn its shapes, which fails with
      "Attempt to convert a value (PerReplica...)"; this takes this worker's part instead;
    - Keras averages the step's logs over workers along axis 0, which scalars lack
      ("Invalid reduction dimension 0"); this hands them over as 1-element vectors.
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            def local(value):
                if isinstance(value, tf.distribute.DistributedValues):
                    return self.distribute_strategy.experimental_local_results(value)[0]
                return value

            for _, _, batches in iterator:
                data_batch = keras.tree.map_structure(local, next(batches))
                break
        return super()._maybe_symbolic_build(data_batch=data_batch)

    def train_step(self, data):
        return _as_vectors(super().train_step(data))

    def test_step(self, data):
        return _as_vectors(super().test_step(data))


def _as_vectors(logs):
    return {key: keras.ops.reshape(value, (1,)) for key, value in logs.items()}


def for_multi_worker(model):
    """``model`` as a ``MultiWorkerTrainee`` sharing its layers (training it trains
    ``model``). Call it under the strategy's scope."""
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    return MultiWorkerTrainee(inputs, model(inputs), name=f"{model.name}_multi_worker")
