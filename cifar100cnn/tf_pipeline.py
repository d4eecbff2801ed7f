"""TensorFlow only: ``tf.data`` input pipelines over uint8 arrays (the default input under
the TensorFlow backend; ``inputs`` picks it). Imported only when Keras runs on TensorFlow."""

import numpy as np
import tensorflow as tf

from .data import check_images, check_labels


def indexed_batches(arrays, batch_size, shuffle=False, seed=0, flips=None):
    """Batches of ``arrays`` (same length), read from the NumPy arrays in place: a tuple of
    tensors per batch, or one tensor when there is one array.

    ``from_tensor_slices`` would copy the arrays into the graph (a second copy of the data in
    memory); here only the indices live in tf.data and each batch is gathered with NumPy.
    With ``shuffle`` the order is a fresh full permutation every epoch. ``flips`` (an
    ``augment.AlternatingFlips``, also one of ``fit``'s callbacks) mirrors the images (the first
    array) it says as they are gathered; ``gather`` reads its epoch, which each epoch's fresh
    iterator picks up.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    arrays = [np.asarray(a) for a in arrays]
    ds = tf.data.Dataset.range(len(arrays[0]))
    if shuffle:
        ds = ds.shuffle(len(arrays[0]), seed=seed, reshuffle_each_iteration=True)

    def gather(indices):
        batch = [a[indices] for a in arrays]
        if flips is not None:
            batch[0] = flips(batch[0], indices)
        return tuple(batch)

    def take(indices):
        batch = tf.numpy_function(gather, [indices], [tf.as_dtype(a.dtype) for a in arrays],
                                  stateful=False)
        for tensor, a in zip(batch, arrays):
            tensor.set_shape((None, *a.shape[1:]))
        return batch[0] if len(batch) == 1 else tuple(batch)

    return ds.batch(batch_size).map(take, num_parallel_calls=tf.data.AUTOTUNE)


def make_pipeline(x, y=None, batch_size=100, shuffle=False, augment=None, seed=0, flips=None):
    """uint8 arrays -> batched, prefetched ``tf.data.Dataset`` of ``(images, labels)``.

    ``augment`` is an optional Keras layer (e.g. ``augment.RandomAffine``) applied per batch
    in parallel map calls, after ``flips`` (see ``indexed_batches``). Without ``y`` the
    elements are the image batches alone.
    """
    check_images(x, "x")
    if y is not None:
        check_labels(y, len(x), "y")
    ds = indexed_batches([x] if y is None else [x, y], batch_size, shuffle, seed, flips)
    if augment is not None:
        def apply(images, labels=None):
            images = augment(tf.cast(images, "float32"), training=True)
            return images if labels is None else (images, labels)
        ds = ds.map(apply, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
