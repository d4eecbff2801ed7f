"""Batched inference that survives GPU out-of-memory."""

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm


def predict_in_batches(model, x, batch_size=500, description="predict"):
    """``model(x)`` batch by batch with a progress bar; halves the batch on GPU out-of-memory.

    Args:
        model: a Keras model (or any callable taking ``training=False``).
        x: the inputs, indexable along the first axis.
        batch_size: images per call to start with (default 500).
        description: the progress bar's label (default "predict").

    Returns:
        The outputs as one float32 NumPy array.
    """
    outputs, start = [], 0
    with tqdm(total=len(x), desc=description, unit="img") as bar:
        while start < len(x):
            batch = x[start:start + batch_size]
            try:
                outputs.append(np.asarray(model(batch, training=False), dtype=np.float32))
            except tf.errors.ResourceExhaustedError:
                if batch_size == 1:
                    raise
                batch_size = max(1, batch_size // 2)
                print(f"Out of memory; retrying with batches of {batch_size}.")
                continue
            start += len(batch)
            bar.update(len(batch))
    return np.concatenate(outputs)
