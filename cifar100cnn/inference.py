"""Batched inference that survives GPU out-of-memory."""

import numpy as np
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
            except Exception as error:  # each backend names running out of memory its own way
                if not out_of_memory(error):
                    raise
                if batch_size == 1:
                    raise
                batch_size = max(1, batch_size // 2)
                print(f"Out of memory; retrying with batches of {batch_size}.")
                continue
            start += len(batch)
            bar.update(len(batch))
    return np.concatenate(outputs)


def out_of_memory(error):
    """Whether ``error`` says the device ran out of memory (TensorFlow, JAX/XLA or PyTorch)."""
    return (type(error).__name__ in ("ResourceExhaustedError", "OutOfMemoryError")
            or "RESOURCE_EXHAUSTED" in str(error))
