"""More than one machine, on existing engines: training with
``tf.distribute.MultiWorkerMirroredStrategy`` (``TF_CONFIG``) and the third model's search with
keras-tuner's distributed mode (``KERASTUNER_*``).

    python -m cifar100cnn.distributed train --model baseline --out DIR [--data ...]
    python -m cifar100cnn.distributed search --budget 6 --epochs 10 --directory DIR [--data ...]

Every machine runs the same command; the environment says which part it plays. Training
saves the model on the chief only; the search's results are written by the tuner chief.
Both are TensorFlow features (``tf.distribute``, keras-tuner's distributed mode); under JAX,
the GPUs of one machine train together through ``hardware.pick_strategy`` (DataParallel).
"""

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile

import tensorflow as tf

from . import artifacts, data, environment, hardware, models, recipes, training, tuning

MODELS = ("baseline", "overfit", "third_original", "third")


def cluster_spec(environ=None):
    """``TF_CONFIG`` read and checked: ``(cluster, task_type, task_index)``.

    Args:
        environ: the environment (default ``os.environ``).
    """
    environ = os.environ if environ is None else environ
    text = environ.get("TF_CONFIG")
    if not text:
        raise ValueError(
            "TF_CONFIG is not set. On each machine set it to the same cluster and that "
            "machine's own task, e.g. TF_CONFIG='{\"cluster\": {\"worker\": "
            "[\"host0:12345\", \"host1:12345\"]}, \"task\": {\"type\": \"worker\", "
            "\"index\": 0}}' (index 1 on host1).")
    try:
        config = json.loads(text)
        cluster, task = config["cluster"], config["task"]
        task_type, index = task["type"], int(task["index"])
        cluster[task_type][index]
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise ValueError(f"TF_CONFIG must hold a cluster and this machine's task in it "
                         f"({type(error).__name__}: {error}); got {text!r}") from None
    return cluster, task_type, index


def is_chief(environ=None):
    """The chief saves the model: the "chief" task, else worker 0 when there is no chief."""
    cluster, task_type, index = cluster_spec(environ)
    return task_type == "chief" or (task_type == "worker" and index == 0 and "chief" not in cluster)


def builder(name, data, third_preset=recipes.SHIPPED_THIRD_PRESET):
    """The function that builds model ``name`` and its recipe's name (for "third", the recipe
    of ``third_preset``)."""
    if name == "third":
        return (lambda: models.build_third(third_preset, whitening_images=data.x_train)), \
            f"third_{third_preset}"
    builders = {"baseline": models.build_baseline, "overfit": models.build_overfit,
                "third_original": models.build_third_original}
    if name not in builders:
        raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
    return builders[name], name


def train(name, data, models_dir="models", epochs=None, seed=0, precision="auto", verbose=2,
          third_preset=recipes.SHIPPED_THIRD_PRESET):
    """Train model ``name`` on every worker of ``TF_CONFIG``'s cluster with
    ``MultiWorkerMirroredStrategy``; the chief saves it under ``models_dir``.

    Call it first thing in the process (the strategy must exist before TensorFlow runs
    anything), on every worker with the same arguments. Each worker keeps its checkpoints
    apart (non-chief workers in a temporary folder, removed at the end), so that the
    workers may share a disk. It always trains from the first epoch: no reuse of a saved
    model and no resume (the workers' checkpoints would disagree), so an interrupted run
    is started again on every machine.

    Args:
        name: "baseline", "overfit", "third_original" or "third".
        data: a ``data.Dataset``, the same on every worker.
        models_dir: where the chief writes the model, its history and its checkpoints.
        epochs: default: the recipe's.
        seed: the same on every worker.
        precision: as in ``hardware.configure_hardware``.
        verbose: Keras verbosity on the chief (the other workers are silent).
        third_preset: the recipe of "third" (default: the committed model's, "robust").

    Returns:
        ``(model, history, path)``: ``path`` is the saved model on the chief, None elsewhere.
    """
    chief = is_chief()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    precision = hardware.resolve_precision(precision)
    build, recipe_name = builder(name, data, third_preset)
    if chief:  # an earlier, interrupted run must not be resumed by the chief alone
        shutil.rmtree(os.path.join(models_dir, "checkpoints", name), ignore_errors=True)
    scratch = None if chief else tempfile.mkdtemp(prefix="cifar100cnn_worker_")
    folder = models_dir if chief else os.path.join(scratch, "models")  # logs/ beside models/
    try:
        model, history = training.train_image_model(
            name, build, data, recipes.recipe(recipe_name, epochs=epochs), folder, retrain=True,
            seed=seed, strategy=strategy, verbose=verbose if chief else 0, precision=precision)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return model, history, artifacts.model_path(name, models_dir) if chief else None


def search(data, max_epochs=10, budget_trials=6, directory="tuner", seed=0, results_path=None,
           widths=None, verbose=2):
    """The third model's search (``tuning.search_third``) in keras-tuner's distributed mode.

    Run it on every machine with the same arguments: on the machine of the oracle with
    ``KERASTUNER_TUNER_ID=chief``, on each worker with its own ``KERASTUNER_TUNER_ID``; all
    with ``KERASTUNER_ORACLE_IP`` and ``KERASTUNER_ORACLE_PORT`` of the chief. The chief
    returns ``(best_hp_values, results)`` and writes ``results_path``; a worker ``(None, [])``.
    """
    if tuning.tuner_role() is None:
        raise ValueError("distributed search: set KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP and "
                         "KERASTUNER_ORACLE_PORT (see README, 'More than one machine'), or call "
                         "tuning.search_third for a search on this machine alone.")
    return tuning.search_third(data, max_epochs, budget_trials, directory, seed, results_path,
                               verbose, widths or tuning.WIDTHS)


def build_parser():
    """The command line of ``python -m cifar100cnn.distributed``: "train" and "search"."""
    parser = argparse.ArgumentParser(prog="python -m cifar100cnn.distributed",
                                     description="Training (TF_CONFIG) and the third model's "
                                                 "search (KERASTUNER_*) over several machines.")
    commands = parser.add_subparsers(dest="command", required=True)
    train_command = commands.add_parser("train", help="MultiWorkerMirroredStrategy training")
    train_command.add_argument("--model", choices=MODELS, default="third",
                               help="the model to train (default: third)")
    train_command.add_argument("--third-preset", choices=recipes.THIRD_PRESETS,
                               default=recipes.SHIPPED_THIRD_PRESET,
                               help="the recipe of --model third (default: the committed "
                                    f"model's, {recipes.SHIPPED_THIRD_PRESET})")
    train_command.add_argument("--out", default=".", help="folder of models/ (on the chief)")
    train_command.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    train_command.add_argument("--precision", default="auto",
                               choices=hardware.PRECISIONS,
                               help="training precision (default auto: mixed_float16 on a GPU, "
                                    "mixed_bfloat16 on CPUs with AMX or AVX512-BF16, else float32)")
    search_command = commands.add_parser("search", help="keras-tuner search of the third model")
    search_command.add_argument("--budget", type=int, default=6, help="trials in all")
    search_command.add_argument("--epochs", type=int, default=10, help="most epochs of a trial")
    search_command.add_argument("--directory",
                                default=os.path.join("models", "checkpoints", "tuner"),
                                help="the tuner's folder (shared by the machines, if they can)")
    search_command.add_argument("--results", default=None,
                                help="JSON file for the trials' results (written by the chief)")
    search_command.add_argument("--widths", type=int, nargs="+", default=None,
                                help="first-block widths of the tuned network to try "
                                     "(default 96 128)")
    for command in (train_command, search_command):
        command.add_argument("--data", choices=("cifar100", "synthetic"), default="cifar100",
                             help="the dataset (default cifar100; synthetic: CIFAR-shaped "
                                  "random images, for smoke tests)")
        command.add_argument("--archive", default=None,
                             help="local cifar-100-python.tar.gz (default: $CIFAR100_ARCHIVE, "
                                  "else download)")
        command.add_argument("--no-verify", action="store_true",
                             help="skip the sha256 check ($CIFAR100_VERIFY=0 does the same)")
        command.add_argument("--quick", action="store_true",
                             help="tiny synthetic data (2,000 + 500 images): a smoke test")
        command.add_argument("--limit", type=int, default=None, metavar="N",
                             help="only the first N training and N/4 validation images "
                                  "(smoke tests)")
        command.add_argument("--seed", type=int, default=0,
                             help="random seed, the same on every machine (default 0)")
    return parser


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def load_data(args):
    """The dataset the arguments name, cut to ``--limit`` images when given."""
    archive, verify = environment.archive_settings(args.archive, not args.no_verify)
    dataset = data.load_dataset(args.data, archive=archive, verify=verify, quick=args.quick,
                                seed=args.seed)
    if args.limit is None:
        return dataset
    if args.limit < 4:
        raise ValueError(f"--limit must be at least 4 images, got {args.limit}")
    n, m = args.limit, max(1, args.limit // 4)
    return dataclasses.replace(dataset, x_train=dataset.x_train[:n], y_train=dataset.y_train[:n],
                               x_val=dataset.x_val[:m], y_val=dataset.y_val[:m])


def check_environment(command):
    """The variables ``command`` needs, checked before any data is read: ``TF_CONFIG`` for
    "train", the ``KERASTUNER_*`` variables for "search". Raises ``ValueError``."""
    if command == "train":
        is_chief()
    elif tuning.tuner_role() is None:
        raise ValueError("set KERASTUNER_TUNER_ID ('chief' on the oracle's machine, a name of "
                         "its own on each worker), KERASTUNER_ORACLE_IP and "
                         "KERASTUNER_ORACLE_PORT (see docs/distributed.md).")


def main(argv=None):
    args = parse_args(argv)
    try:
        check_environment(args.command)
    except ValueError as error:
        print(f"python -m cifar100cnn.distributed {args.command}: {error}", file=sys.stderr)
        return 2
    if args.command == "train":
        _, history, path = train(args.model, load_data(args),
                                 os.path.join(args.out, "models"), args.epochs, args.seed,
                                 args.precision, third_preset=args.third_preset)
        where = f"saved {path}" if path else "not saved here (the chief saves it)"
        print(f"RESULT {args.model}: {len(history['loss'])} epoch(s), best val_accuracy "
              f"{max(history['val_accuracy']):.4f}; {where}", flush=True)
        return 0
    best, results = search(load_data(args), args.epochs, args.budget, args.directory,
                           args.seed, args.results, args.widths)
    if best is None:
        print("RESULT worker done: the tuner chief holds the results.", flush=True)
    else:
        print(f"RESULT best of {len(results)} trial(s): {json.dumps(best)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
