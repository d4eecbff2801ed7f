"""Fault injection: kill training and saving hard (SIGKILL), rerun, and check nothing is lost.

Run it on its own (a few tens of seconds on a laptop CPU)::

    python tests/fault_injection.py            # all scenarios, prints a report, exit 1 on failure
    python tests/fault_injection.py --epochs 4 --workdir /tmp/fi --keep

or from the test suite (tests/test_reliability.py calls ``hard_kill_training`` and
``kill_during_model_save``, and runs this script with ``--only array-save``).

Scenarios
---------
training
    A reference run trains a baseline model for ``epochs`` epochs on tiny synthetic data
    without interruption. A second run (in a fresh models folder) is slowed down per batch
    and SIGKILLed in the middle of an epoch after at least one epoch was completed; it is
    then run again with the same arguments. At the kill, the epoch log holds the completed
    epochs and the best-weights file the weights of the best of them (its validation accuracy
    is recomputed). The rerun must resume at the first epoch not completed, keep the logged
    values of the completed epochs unchanged in the final history, finish with a history of
    ``epochs`` epochs (as the reference) and leave a model that ``artifacts.load_model``
    accepts; when the best epoch was one completed before the kill, the final model holds
    exactly the best weights saved before the kill.
array-save / model-save
    A process is SIGKILLed while ``artifacts.save_array`` / ``artifacts.save_model`` is
    writing (the writer is made to stop half-way). The final file name must hold either
    nothing (first save) or the previous complete file, never a truncated one; saving again
    replaces it cleanly.

The killed processes are children of this script (``--child ...``); only they are killed.
"""

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MODEL_NAME = "baseline"      # the smallest recipe: RMSprop, no augmentation, batch 100
N_TRAIN, N_TEST = 300, 50    # -> 240 train / 60 validation images: 3 batches per epoch
BATCH_DELAY = 0.4            # seconds added per training batch in the run that is killed
STARTUP_TIMEOUT = 240        # seconds a child may take to reach the point where it is killed


class FaultInjectionError(AssertionError):
    """A property checked by the fault injection does not hold."""


def check(condition, message):
    if not condition:
        raise FaultInjectionError(message)


# ---------------------------------------------------------------------------
# Children (run in their own process, possibly killed)
# ---------------------------------------------------------------------------

def tiny_data(seed):
    """The synthetic data every training child uses (240 training, 60 validation images)."""
    from cifar100cnn import data

    (x, y), (x_test, y_test) = data.make_synthetic(N_TRAIN, N_TEST, seed=seed)
    (x_train, y_train), (x_val, y_val) = data.split_train_val(x, y)
    return data.Dataset(x_train, y_train, x_val, y_val, x_test, y_test,
                        data.SYNTHETIC_FINE_NAMES, data.SYNTHETIC_COARSE_NAMES,
                        data.SYNTHETIC_FINE_TO_COARSE, "synthetic (fault injection)")


def child_train(models_dir, epochs, batch_delay, seed):
    """Train the baseline model; print EPOCH_BEGIN/BATCH/EPOCH_END lines as it goes."""
    from cifar100cnn import models, recipes, training

    original_begin, original_end = training.EpochLog.on_epoch_begin, training.EpochLog.on_epoch_end

    def on_epoch_begin(self, epoch, logs=None):
        self._fi_epoch = epoch
        print(f"EPOCH_BEGIN {epoch}", flush=True)
        original_begin(self, epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        original_end(self, epoch, logs)
        print(f"EPOCH_END {epoch}", flush=True)

    def on_train_batch_end(self, batch, logs=None):
        print(f"BATCH {self._fi_epoch} {batch}", flush=True)
        if batch_delay:
            time.sleep(batch_delay)

    training.EpochLog.on_epoch_begin = on_epoch_begin
    training.EpochLog.on_epoch_end = on_epoch_end
    training.EpochLog.on_train_batch_end = on_train_batch_end

    dataset = tiny_data(seed)
    _, history = training.train_image_model(MODEL_NAME, models.build_baseline, dataset,
                                            recipes.recipe("baseline", epochs=epochs),
                                            models_dir=models_dir, seed=seed, verbose=0)
    print(f"DONE {len(history['loss'])}", flush=True)


def child_save_array(path, value):
    """Save an array with a writer that stops half-way and waits to be killed."""
    import numpy as np

    from cifar100cnn import artifacts

    real_save = np.save

    def half_save(handle, array, *args, **kwargs):
        import io
        buffer = io.BytesIO()
        real_save(buffer, array, *args, **kwargs)
        payload = buffer.getvalue()
        handle.write(payload[:len(payload) // 2])
        handle.flush()
        os.fsync(handle.fileno())
        print(f"WRITING {handle.name}", flush=True)
        time.sleep(600)

    np.save = half_save
    artifacts.save_array(np.full((64, 32, 32, 3), value, dtype=np.uint8), path)
    print("SAVED", flush=True)  # never reached


def child_save_model(path, seed):
    """Save a model with a writer that leaves half a file and waits to be killed."""
    import keras

    from cifar100cnn import artifacts, models

    real_save = keras.Model.save

    def half_save(self, filepath, *args, **kwargs):
        real_save(self, filepath, *args, **kwargs)
        with open(filepath, "r+b") as handle:
            handle.truncate(os.path.getsize(filepath) // 2)
        print(f"WRITING {filepath}", flush=True)
        time.sleep(600)

    keras.Model.save = half_save
    keras.utils.set_random_seed(seed)
    artifacts.save_model(models.build_baseline(), path)
    print("SAVED", flush=True)  # never reached


# ---------------------------------------------------------------------------
# Parent side
# ---------------------------------------------------------------------------

class Child:
    """A child process of this script whose stdout lines are read in the background."""

    def __init__(self, *args):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
            TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child", *map(str, args)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        self.lines, self.output = queue.Queue(), []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line.strip())
        self.lines.put(None)

    def wait_for(self, predicate, timeout=STARTUP_TIMEOUT):
        """Return the first stdout line satisfying ``predicate``."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                break
            if line is None:
                self.process.wait()
                raise FaultInjectionError(
                    f"child exited (status {self.process.returncode}) before the expected "
                    f"point; its output:\n{self.tail()}")
            if predicate(line):
                return line
        self.kill()
        raise FaultInjectionError(f"child timed out after {timeout} s; its output:\n{self.tail()}")

    def kill(self):
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()
        return self.process.returncode

    def finish(self, timeout=STARTUP_TIMEOUT):
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise FaultInjectionError(f"child timed out; its output:\n{self.tail()}") from None
        time.sleep(0.05)  # let the reader thread drain the pipe
        check(self.process.returncode == 0,
              f"child failed with status {self.process.returncode}:\n{self.tail()}")
        return [line.strip() for line in self.output]

    def tail(self, n=40):
        return "".join(self.output[-n:])


def _epoch_lines(lines, tag):
    return [int(line.split()[1]) for line in lines if line.startswith(tag + " ")]


def _temp_leftovers(folder, final_name):
    stem = os.path.splitext(final_name)[0]
    return sorted(name for name in os.listdir(folder)
                  if name != final_name and name.startswith(f".{stem}.") and ".tmp" in name)


def _best_weights_at_kill(path, seed):
    """The weights in the best-weights file, and their accuracy on the validation images."""
    import numpy as np

    from cifar100cnn import models

    model = models.build_baseline()
    model.load_weights(path)
    dataset = tiny_data(seed)
    predicted = np.asarray(model(dataset.x_val, training=False)).argmax(axis=1)
    return model.get_weights(), float((predicted == dataset.y_val).mean())


def hard_kill_training(workdir, epochs=4, seed=0, batch_delay=BATCH_DELAY):
    """SIGKILL a training run mid-epoch, rerun it, compare with an uninterrupted run."""
    import numpy as np

    from cifar100cnn import artifacts

    check(epochs >= 3, "use at least 3 epochs so that the kill lands before the last one")
    reference_dir = os.path.join(workdir, "reference")
    killed_dir = os.path.join(workdir, "interrupted")
    work_dir = os.path.join(killed_dir, "checkpoints", MODEL_NAME)

    # The uninterrupted reference run goes on in parallel with the interrupted one.
    reference = Child("train", reference_dir, epochs, 0, seed)

    # Kill after the first batch of epoch 1: epoch 0 is complete, epoch 1 is half done.
    child = Child("train", killed_dir, epochs, batch_delay, seed)
    child.wait_for(lambda line: line.startswith("BATCH ") and int(line.split()[1]) >= 1)
    status = child.kill()
    check(status == -signal.SIGKILL, f"the child was not killed by SIGKILL (status {status})")
    lines_before = [line.strip() for line in child.output]
    completed = _epoch_lines(lines_before, "EPOCH_END")
    begun = _epoch_lines(lines_before, "EPOCH_BEGIN")
    check(len(completed) >= 1 and begun[-1] == completed[-1] + 1,
          f"the kill did not land mid-epoch after a completed epoch: began {begun}, "
          f"completed {completed}")
    check(not os.path.exists(artifacts.model_path(MODEL_NAME, killed_dir)),
          "a final model file exists although training was killed")
    with open(os.path.join(work_dir, "epochs.json")) as handle:
        log_at_kill = json.load(handle)
    logged = sorted(int(key) for key in log_at_kill)
    with open(os.path.join(work_dir, "backup", "training_metadata.json")) as handle:
        backup_epoch = json.load(handle)["epoch"]
    check(logged == completed, f"epoch log {logged} != completed epochs {completed} at the kill")
    check(backup_epoch == len(completed),
          f"the backup resumes at epoch {backup_epoch}, expected {len(completed)}")
    best_file = os.path.join(work_dir, "best.weights.h5")
    check(os.path.isfile(best_file), "no best-weights file although epochs were completed")
    best_at_kill, best_accuracy = _best_weights_at_kill(best_file, seed)
    logged_best = max(log_at_kill[str(epoch)]["val_accuracy"] for epoch in completed)
    check(abs(best_accuracy - logged_best) < 1e-6,
          f"the best-weights file scores {best_accuracy} on the validation images; the best "
          f"completed epoch logged {logged_best}")

    rerun = Child("train", killed_dir, epochs, 0, seed).finish()
    reference_lines = reference.finish()
    check(_epoch_lines(reference_lines, "EPOCH_BEGIN") == list(range(epochs)),
          "the reference run did not run every epoch once")
    with open(artifacts.history_path(MODEL_NAME, reference_dir)) as handle:
        reference_history = json.load(handle)
    rerun_begun = _epoch_lines(rerun, "EPOCH_BEGIN")
    check(rerun_begun and rerun_begun[0] == len(completed),
          f"the rerun started at epoch {rerun_begun[:1]}, expected {len(completed)} "
          "(the first epoch not completed before the kill)")
    check(rerun_begun == list(range(len(completed), epochs)),
          f"the rerun ran epochs {rerun_begun}; expected {list(range(len(completed), epochs))}")
    with open(artifacts.history_path(MODEL_NAME, killed_dir)) as handle:
        history = json.load(handle)
    lengths = {key: len(values) for key, values in history.items()}
    check(set(lengths.values()) == {epochs},
          f"resumed history lengths {lengths}, expected {epochs} for every key")
    check(set(history) == set(reference_history),
          f"history keys {sorted(history)} != reference {sorted(reference_history)}")
    check(len(reference_history["loss"]) == epochs, "the reference run has the wrong length")
    for epoch in completed:  # what was finished before the kill is kept as it was
        kept = {key: values[epoch] for key, values in history.items()}
        check(kept == log_at_kill[str(epoch)],
              f"epoch {epoch} changed after the rerun: {kept} != {log_at_kill[str(epoch)]}")
    model = artifacts.load_model(artifacts.model_path(MODEL_NAME, killed_dir))
    best_epoch = int(np.argmax(history["val_accuracy"]))  # the first of the best: BestWeights
    if best_epoch in completed:                           # saves strict improvements only
        check(all(np.array_equal(a, b) for a, b in zip(model.get_weights(), best_at_kill)),
              f"the best epoch ({best_epoch}) finished before the kill, but the final model "
              "does not hold the best weights saved then")
    leftovers = sorted(os.listdir(work_dir)) if os.path.isdir(work_dir) else []
    check(not any(name in leftovers for name in ("epochs.json", "best.weights.h5", "backup")),
          f"the work folder still holds {leftovers} after the run finished")
    return {"epochs": epochs, "completed_before_kill": len(completed),
            "killed_in_epoch": begun[-1], "rerun_epochs": rerun_begun,
            "best_epoch": best_epoch, "best_weights_at_kill_accuracy": best_accuracy,
            "history_length": len(history["loss"]),
            "reference_length": len(reference_history["loss"]),
            "model_params": model.count_params()}


def kill_during_array_save(workdir):
    """SIGKILL while save_array writes: first save and overwrite of an existing file."""
    import numpy as np

    from cifar100cnn import artifacts

    results = {}
    folder = os.path.join(workdir, "arrays")
    os.makedirs(folder, exist_ok=True)
    for case in ("first_save", "overwrite"):
        path = os.path.join(folder, f"{case}.npy")
        old = np.full((8, 32, 32, 3), 7, dtype=np.uint8)
        if case == "overwrite":
            artifacts.save_array(old, path)
        child = Child("save-array", path, 200)
        line = child.wait_for(lambda text: text.startswith("WRITING "))
        temp = line.split(" ", 1)[1]
        check(os.path.getsize(temp) > 0, "the writer had not started writing when killed")
        child.kill()
        leftovers = _temp_leftovers(folder, os.path.basename(path))
        if case == "first_save":
            check(not os.path.exists(path), f"{path} exists after a save killed mid-write")
        else:
            check(np.array_equal(artifacts.load_array(path), old),
                  f"{path} no longer holds the previous complete array")
        new = np.full((64, 32, 32, 3), 200, dtype=np.uint8)
        artifacts.save_array(new, path)
        check(np.array_equal(artifacts.load_array(path), new), "saving again did not replace the file")
        results[case] = {"partial_temp_files": leftovers,
                         "after_next_save": _temp_leftovers(folder, os.path.basename(path))}
    return results


def kill_during_model_save(workdir, seed=1):
    """SIGKILL while save_model writes over an existing model."""
    import keras
    import numpy as np

    from cifar100cnn import artifacts, models

    folder = os.path.join(workdir, "models")
    path = artifacts.model_path(MODEL_NAME, folder)
    keras.utils.set_random_seed(0)
    old = models.build_baseline()
    artifacts.save_model(old, path)
    old_size = os.path.getsize(path)

    child = Child("save-model", path, seed)
    line = child.wait_for(lambda text: text.startswith("WRITING "))
    temp = line.split(" ", 1)[1]
    partial_size = os.path.getsize(temp)
    child.kill()
    check(os.path.getsize(path) == old_size, "the final model file changed size")
    loaded = artifacts.load_model(path)
    check(all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), old.get_weights())),
          "the final model file no longer holds the previous model")
    try:
        keras.models.load_model(temp, compile=False)
        temp_loadable = True
    except Exception:
        temp_loadable = False
    check(not temp_loadable, "the injected fault did not leave a broken temporary file")

    keras.utils.set_random_seed(seed)
    new = models.build_baseline()
    artifacts.save_model(new, path)
    reloaded = artifacts.load_model(path)
    check(all(np.array_equal(a, b) for a, b in zip(reloaded.get_weights(), new.get_weights())),
          "saving again did not replace the model")
    return {"old_size": old_size, "partial_temp_size": partial_size,
            "partial_temp_files": _temp_leftovers(folder, os.path.basename(path))}


SCENARIOS = {
    "training": hard_kill_training,
    "array-save": kill_during_array_save,
    "model-save": kill_during_model_save,
}


def run_all(workdir=None, epochs=4, scenarios=tuple(SCENARIOS), keep=False):
    """Run the scenarios; return {name: details}; raise FaultInjectionError on a failure."""
    own = workdir is None
    workdir = workdir or tempfile.mkdtemp(prefix="fault_injection_")
    os.makedirs(workdir, exist_ok=True)
    report = {}
    try:
        for name in scenarios:
            started = time.time()
            folder = os.path.join(workdir, name)
            if name == "training":
                details = SCENARIOS[name](folder, epochs=epochs)
            else:
                details = SCENARIOS[name](folder)
            details["seconds"] = round(time.time() - started, 1)
            report[name] = details
    finally:
        if own and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help="folder for the runs (default: a temporary folder)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--only", choices=list(SCENARIOS), action="append")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "train":
            child_train(rest[0], int(rest[1]), float(rest[2]), int(rest[3]))
        elif kind == "save-array":
            child_save_array(rest[0], int(rest[1]))
        elif kind == "save-model":
            child_save_model(rest[0], int(rest[1]))
        else:
            parser.error(f"unknown child {kind!r}")
        return 0
    try:
        report = run_all(args.workdir, args.epochs, args.only or tuple(SCENARIOS), args.keep)
    except FaultInjectionError as error:
        print(f"FAILED: {error}")
        return 1
    for name, details in report.items():
        print(f"ok  {name}: {json.dumps(details)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
