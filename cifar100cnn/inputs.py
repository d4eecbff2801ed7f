"""Batches for ``fit``, on any Keras backend: ``tf.data`` under TensorFlow (``tf_pipeline``),
else ``ArrayBatches``, a ``keras.utils.PyDataset`` that gathers batches from the uint8 arrays in
memory (augmentation then runs inside the model, on the accelerator)."""

import math

import keras
import numpy as np

from .data import check_images, check_labels
from .hardware import backend


class ArrayBatches(keras.utils.PyDataset):
    """Batches gathered from arrays in place: a tuple per batch, or one array when there is
    one array. With ``shuffle`` each epoch visits a fresh permutation, drawn from ``seed``
    and the epoch's number (the same order for the same seed, run after run).

    Args:
        arrays: arrays of the same length (images, labels, ...). int64 ones are handed over as
            int32, the widest integer JAX keeps by default.
        batch_size: rows per batch (the last batch may be smaller).
        shuffle: default False.
        seed: default 0.
        flips: default None; an ``augment.AlternatingFlips``: mirrors the rows it says in
            the first array (the images) as each batch is gathered.
    """

    def __init__(self, arrays, batch_size, shuffle=False, seed=0, flips=None):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.arrays = [a.astype(np.int32) if a.dtype == np.int64 else a
                       for a in map(np.asarray, arrays)]
        self.batch_size, self.shuffle, self.seed, self.flips = int(batch_size), shuffle, seed, flips
        self.epoch = 0
        self.order = self._order()

    def _order(self):
        n = len(self.arrays[0])
        if not self.shuffle:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch]).permutation(n)

    def __len__(self):
        return math.ceil(len(self.arrays[0]) / self.batch_size)

    def __getitem__(self, index):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of {len(self)}")
        rows = self.order[index * self.batch_size:(index + 1) * self.batch_size]
        batch = [a[rows] for a in self.arrays]
        if self.flips is not None:
            batch[0] = self.flips(batch[0], rows)
        return batch[0] if len(batch) == 1 else tuple(batch)

    def on_epoch_end(self):
        self.epoch += 1
        self.order = self._order()


def tf_data():
    """Whether batches go through ``tf.data`` (Keras runs on TensorFlow)."""
    return backend() == "tensorflow"


def make_batches(x, y=None, batch_size=100, shuffle=False, augment=None, seed=0, flips=None):
    """uint8 images (and labels) -> the batches ``fit`` reads on this backend.

    Args:
        x: uint8 (or 0-255 float) images, shape (N, 32, 32, 3).
        y: integer labels, or None for the images alone.
        batch_size: images per batch (default 100).
        shuffle: default False.
        augment: a Keras layer applied to each training batch in ``tf.data``'s parallel map
            (TensorFlow only; elsewhere augmentation runs inside the model). Default None.
        seed: default 0.
        flips: default None; an ``augment.AlternatingFlips`` mirroring images as they are
            gathered (before ``augment``); pass it to ``fit``'s callbacks too, or it never
            learns the epoch and mirrors the same half every epoch.

    Returns:
        A prefetching ``tf.data.Dataset`` under TensorFlow, else an ``ArrayBatches``.
    """
    if tf_data():
        from . import tf_pipeline  # imports TensorFlow: only on its backend

        return tf_pipeline.make_pipeline(x, y, batch_size, shuffle, augment, seed, flips)
    check_images(x, "x")
    if y is not None:
        check_labels(y, len(x), "y")
    if augment is not None:
        raise ValueError(f"augmentation in the input pipeline needs TensorFlow's tf.data; under "
                         f"{backend()} it runs inside the model (augment_on='model' or 'auto')")
    return ArrayBatches([x] if y is None else [x, y], batch_size, shuffle, seed, flips)


def feature_batches(arrays, batch_size, shuffle=False, seed=0):
    """Batches of arrays of any shape (e.g. cached features and their labels).

    Returns:
        A prefetching ``tf.data.Dataset`` under TensorFlow, else an ``ArrayBatches``.
    """
    if tf_data():
        from . import tf_pipeline  # imports TensorFlow: only on its backend

        return tf_pipeline.indexed_batches(arrays, batch_size, shuffle, seed).prefetch(-1)
    return ArrayBatches(arrays, batch_size, shuffle, seed)


def batch_count(batches):
    """The number of batches in one pass over ``batches`` (a ``tf.data.Dataset`` or a
    ``PyDataset``)."""
    if isinstance(batches, keras.utils.PyDataset):
        return len(batches)
    return int(batches.cardinality())
