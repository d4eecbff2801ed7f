"""Training time of the tuned and robust third recipes, side by side through the real training path.

Each measurement is a whole call of ``training.train_image_model``, as ThirdModel.ipynb trains the
third model: the input pipeline (flips and shifts, alternating flips for ``robust``), the
corruption inside the training step, the per-epoch validation, checkpoints and saving. The two
recipes take turns, the other one first in every other round, so that a shared CPU loads them
alike; each round starts from a cleared session and an empty folder. Synthetic CIFAR-shaped
images of the real sizes: the time does not depend on what the pixels show.

    python benchmarks/training_time.py [--train 10000] [--val 10000] [--epochs 3] [--rounds 2]
"""

import argparse
import dataclasses
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from cifar100cnn import data, models, recipes, training, training_record  # noqa: E402

PRESETS = ("third_tuned", "third_robust")


def train_once(preset, dataset, epochs):
    """Seconds for one ``train_image_model`` call of ``preset`` for ``epochs`` epochs, the
    seconds of each epoch (its history's), and the precision it trained in."""
    import keras

    keras.backend.clear_session()
    setup = training.set_up_training("auto", seed=0)
    recipe = recipes.recipe(preset, epochs=epochs)
    with tempfile.TemporaryDirectory() as models_dir:
        start = time.perf_counter()
        _, history = training.train_image_model(
            "third", lambda: models.build(preset, recipe, whitening_images=dataset.x_train),
            dataset, recipe, models_dir, retrain=True, seed=0, strategy=setup.strategy, verbose=0,
            augment_on=setup.augment_on, jit_compile=setup.jit_compile, precision=setup.precision)
        spent = time.perf_counter() - start
    return spent, getattr(history, "history", history)["seconds"], setup.precision


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=10_000, help="training images (default 10,000)")
    parser.add_argument("--val", type=int, default=10_000, help="validation images (default 10,000)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per measurement (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per recipe (default 2)")
    args = parser.parse_args(argv)
    full = data.load_dataset("synthetic")
    dataset = dataclasses.replace(full, x_train=full.x_train[:args.train], y_train=full.y_train[:args.train],
                                  x_val=full.x_val[:args.val], y_val=full.y_val[:args.val])
    seconds = {preset: [] for preset in PRESETS}
    later_epochs = {preset: [] for preset in PRESETS}  # the first epoch also traces and builds
    for round_ in range(args.rounds):
        for preset in PRESETS if round_ % 2 == 0 else PRESETS[::-1]:
            spent, per_epoch, precision = train_once(preset, dataset, args.epochs)
            seconds[preset].append(spent)
            later_epochs[preset] += per_epoch[1:]
            print(f"round {round_ + 1}: {preset} {spent:.1f} s; epochs "
                  f"{', '.join(f'{s:.1f}' for s in per_epoch)} s", flush=True)
    mean = {preset: sum(values) / len(values) for preset, values in seconds.items()}
    print(f"{training_record.machine()}, {precision}; {args.train:,} training and "
          f"{len(dataset.x_val):,} validation images, {args.epochs} epochs per call")
    for preset in PRESETS:
        print(f"{preset:>14}: {mean[preset]:.1f} s per call ({', '.join(f'{s:.1f}' for s in seconds[preset])})")
    print(f"robust / tuned: {mean['third_robust'] / mean['third_tuned']:.3f}")
    if all(later_epochs.values()):
        epoch = {preset: sum(values) / len(values) for preset, values in later_epochs.items()}
        print(f"epochs after the first: tuned {epoch['third_tuned']:.1f} s, robust "
              f"{epoch['third_robust']:.1f} s; robust / tuned: "
              f"{epoch['third_robust'] / epoch['third_tuned']:.3f}")


if __name__ == "__main__":
    main()
