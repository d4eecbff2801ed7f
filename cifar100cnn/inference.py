"""Batched inference on any Keras backend (TensorFlow, JAX, PyTorch).

Every evaluation in the package predicts through ``predict_in_batches``: inference mode
always (``predict_on_batch``, never ``training=True``), a progress bar, the batch halved
on out-of-memory errors of whichever backend runs, and an optional bfloat16 pass for CPUs
that compute in bfloat16 natively (AMX, AVX-512 BF16), checked against float32 wherever
its rounding could change a ranking.
"""

import weakref

import numpy as np
from tqdm.auto import tqdm

from . import hardware

PRECISIONS = ("float32", "bfloat16")
# bfloat16 keeps 8 significant bits. On the CIFAR-100 test set the gaps in log-probability
# that decide top-1 and top-5 moved by at most 0.45 between bfloat16 and float32 for the tuned
# third model, and by at most 0.78 once its temperature (0.63) was folded in: the error grows
# with the logits' scale. A row whose gap is below this margin is predicted again in float32;
# benchmarks/testmodels_speed.py checks every decision against float32.
VERIFY_MARGIN = 1.2
TOP_K = (1, 5)
_bf16_copies = weakref.WeakKeyDictionary()


def default_precision():
    """"bfloat16" on a CPU-only TensorFlow machine whose CPU has native bfloat16
    (``hardware.BF16_CPU_FLAGS``: its oneDNN kernels use it, several times float32's speed
    there), else "float32"."""
    if hardware.backend() != "tensorflow" or not hardware.cpu_flags() & set(hardware.BF16_CPU_FLAGS):
        return "float32"
    return "float32" if hardware.gpu_names() else "bfloat16"


def bfloat16_copy(model):
    """A copy of ``model`` computing in bfloat16 (variables kept in float32), except its
    output layer, which keeps its own dtype; the same copy is returned for the same model."""
    import keras

    if model in _bf16_copies:
        return _bf16_copies[model]
    last = model.layers[-1].name

    def in_bf16(layer):
        config = layer.get_config()
        if "dtype" in config and layer.name != last:
            config["dtype"] = "mixed_bfloat16"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=in_bf16)
    copy.set_weights(model.get_weights())
    _bf16_copies[model] = copy
    return copy


def _infer(model, batch):
    """One batch in inference mode: the model's compiled predict step when it has one."""
    if hasattr(model, "predict_on_batch"):
        return model.predict_on_batch(batch)
    return model(batch, training=False)


def predict_raw(model, x, batch_size=500, description="predict"):
    """``model``'s outputs for ``x`` as it computes them (no bfloat16 copy, no check); no
    progress bar when ``description`` is None."""
    outputs, start = [], 0
    # Forced off only when there is nothing to show; otherwise tqdm's own settings apply
    # ($TQDM_DISABLE, which the run command sets for its notebooks' kernels).
    quiet = {"disable": True} if description is None or len(x) == 0 else {}
    with tqdm(total=len(x), desc=description, unit="img", **quiet) as bar:
        while start < len(x):
            batch = x[start:start + batch_size]
            try:
                outputs.append(np.asarray(_infer(model, batch), dtype=np.float32))
            except Exception as error:
                if not hardware.out_of_memory(error) or batch_size == 1:
                    raise
                batch_size = max(1, batch_size // 2)
                print(f"Out of memory; retrying with batches of {batch_size}.")
                continue
            start += len(batch)
            bar.update(len(batch))
    if not outputs:
        return np.zeros((0,) + tuple(model.output_shape[1:]), np.float32)
    return np.concatenate(outputs)


def close_calls(proba, labels=None, margin=VERIFY_MARGIN, ranks=TOP_K):
    """Rows whose top-k decisions a rounding error of ``margin`` in log-probability could
    change, for each k in ``ranks``.

    Args:
        proba: probabilities, shape (N, classes).
        labels: the true classes; given, a row is close when its true class lies within
            ``margin`` of the boundary of the top k (only "right or wrong" matters); without
            them, when the k-th and (k+1)-th classes lie within ``margin`` (the predicted
            classes themselves matter).
        margin: the gap in log-probability below which a row counts as close.
        ranks: the k of the top-k decisions that must hold (default 1 and 5).

    Returns:
        A boolean array of length N.
    """
    logp = np.log(np.clip(np.asarray(proba, np.float64), 1e-30, None))
    rows = np.arange(len(logp))
    close = np.zeros(len(logp), bool)
    if labels is None:
        ranked = -np.sort(-logp, axis=1)
        for k in ranks:
            if k < logp.shape[1]:
                close |= ranked[:, k - 1] - ranked[:, k] < margin
        return close
    labels = np.asarray(labels)
    own = logp[rows, labels]
    others = logp.copy()
    others[rows, labels] = -np.inf
    others = -np.sort(-others, axis=1)
    for k in ranks:
        if k <= others.shape[1]:
            close |= np.abs(own - others[:, k - 1]) < margin
    return close


def predict_in_batches(model, x, batch_size=500, description="predict", precision="float32",
                       labels=None, ranks=TOP_K):
    """The model's outputs for ``x``, batch by batch, in inference mode, with a progress bar;
    halves the batch on out-of-memory errors (TensorFlow, JAX or PyTorch).

    Args:
        model: a Keras model (or any callable taking ``training=False``).
        x: the inputs, indexable along the first axis.
        batch_size: images per call to start with (default 500).
        description: the progress bar's label (default "predict").
        precision: "float32" (default) or "bfloat16": a bfloat16 copy of the model predicts,
            then every row whose top-1 or top-5 decision its rounding could change
            (``close_calls``) is predicted again in float32. The decisions are then float32's,
            the probabilities of the other rows bfloat16's: use it where only decisions count.
        labels: the true classes of ``x`` (bfloat16 only): then only whether each row's top-1
            and top-5 are right must hold, which leaves fewer rows to predict again.
        ranks: the top-k decisions a bfloat16 pass must keep (default top-1 and top-5).

    Returns:
        The outputs as one float32 NumPy array.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "float32":
        return predict_raw(model, x, batch_size, description)
    proba = predict_raw(bfloat16_copy(model), x, batch_size, f"{description} (bf16)")
    return recheck_close_calls(model, x, proba, close_calls(proba, labels, ranks=ranks), batch_size, description)


def recheck_close_calls(model, x, proba, close, batch_size=500, description="predict"):
    """``proba`` with the rows marked in ``close`` predicted again by ``model`` in float32."""
    rows = np.flatnonzero(close)
    if len(rows):
        proba = np.array(proba, np.float32, copy=True)
        proba[rows] = predict_raw(model, np.asarray(x)[rows], batch_size,
                               f"{description} (float32 check)")
    return proba


def resolve_precision(choice="auto"):
    """``choice`` ("auto", "float32" or "bfloat16") as a precision; "auto" is
    ``default_precision()``."""
    if choice == "auto":
        return default_precision()
    if choice not in PRECISIONS:
        raise ValueError(f"precision must be 'auto', 'float32' or 'bfloat16', got {choice!r}")
    return choice
