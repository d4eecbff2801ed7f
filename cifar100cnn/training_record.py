"""When, on what machine and how each saved model was trained.

The record is written beside the model (``models/<model>.trained.json``) by the notebook that
trained it, and shown with the per-epoch history when a later run reuses the model, so that an
executed notebook tells the whole story either way. A record names the history file it belongs
to (its sha256): a model trained again elsewhere, without a new record, is never described by
an old one.
"""

import datetime
import hashlib
import json
import os
import platform

from .artifacts import atomic_path, history_path

NOT_RECORDED = ("When, on what machine and in what precision it was trained was not stored "
                "with this model (it predates the training records); its per-epoch history is below.")


def record_path(name, models_dir="models"):
    """``models/<model file stem>.trained.json``."""
    return history_path(name, models_dir).replace(".history.json", ".trained.json")


def _sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def machine():
    """The CPU's model name and core count, and the names of the GPUs the backend sees."""
    from .hardware import gpu_names

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpus = gpu_names()
    return f"{cpu}, {os.cpu_count()} cores" + ("; " + ", ".join(gpus) if gpus else "")


def save(name, models_dir, setup_description, now=None):
    """Write the record of model ``name``, trained just now with ``setup_description`` (the
    training setup's line: software, devices, precision, strategy)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    record = {"trained": now.strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
              "setup": setup_description,
              "history_sha256": _sha256(history_path(name, models_dir))}
    with atomic_path(record_path(name, models_dir)) as tmp, open(tmp, "w") as handle:
        json.dump(record, handle, indent=1)
    return record


def load(name, models_dir="models"):
    """The record of model ``name``, or None when there is none for its current history."""
    path, history = record_path(name, models_dir), history_path(name, models_dir)
    if not (os.path.exists(path) and os.path.exists(history)):
        return None
    with open(path) as handle:
        record = json.load(handle)
    return record if record.get("history_sha256") == _sha256(history) else None


def epoch_table(history):
    """The per-epoch history as a text table; the epoch kept (best validation accuracy) is
    marked with "*"."""
    keys = [key for key in ("accuracy", "val_accuracy", "loss", "val_loss", "seconds") if history.get(key)]
    if not keys:
        return "(no per-epoch history stored)"
    best = None
    if history.get("val_accuracy"):
        best = max(range(len(history["val_accuracy"])), key=history["val_accuracy"].__getitem__)
    lines = ["epoch " + " ".join(f"{key:>12}" for key in keys)]
    for epoch in range(len(history[keys[0]])):
        cells = " ".join(f"{history[key][epoch]:12.4f}" if key != "seconds" else f"{history[key][epoch]:12.0f}"
                         for key in keys)
        lines.append(f"{epoch + 1:>4}{'*' if epoch == best else ' '} {cells}")
    return "\n".join(lines)


def report(name, models_dir, history, setup_description, run_started):
    """What a notebook prints after training or reusing model ``name``.

    A model whose history was written after ``run_started`` (a ``time.time()`` taken in the
    notebook's setup) was trained in this run: its record is written now and its epochs are
    already in the log above. A reused model is described by its record (or a note that it has
    none) and its per-epoch history.

    Args:
        name: the model's name (``artifacts.MODEL_FILES``).
        models_dir: the folder of models.
        history: the history the training returned (or the stored one, when reused).
        setup_description: this run's training setup (``training.TrainingSetup.description``).
        run_started: when the notebook's run began (seconds since the epoch).

    Returns:
        The text to print.
    """
    epochs = len(history.get("loss", []))
    best = ""
    if history.get("val_accuracy"):
        best_epoch = max(range(epochs), key=history["val_accuracy"].__getitem__)
        best = (f"; the epoch kept: {best_epoch + 1} (best val_accuracy "
                f"{history['val_accuracy'][best_epoch]:.4f})")
    path = history_path(name, models_dir)
    if os.path.exists(path) and os.path.getmtime(path) >= run_started:
        record = save(name, models_dir, setup_description)
        return (f"Trained {name} in this run: {_epochs(epochs)}{best}. "
                f"Record: {record_path(name, models_dir)}")
    record = load(name, models_dir)
    if record:
        note = f" ({record['note']})" if record.get("note") else ""
        where = (f"Trained {record['trained']} on {record['machine']}; "
                 f"{record['setup'].replace(chr(10), '; ')}{note}")
    else:
        where = NOT_RECORDED
    return f"{where}\n{_epochs(epochs)}{best}:\n{epoch_table(history)}"


def _epochs(count):
    return f"{count} epoch" + ("" if count == 1 else "s")
