"""What robustness costs per training step: the tuned third recipe (``recipes.THIRD_TUNED``)
against the robust one (``recipes.THIRD_ROBUST``: each image standardized by its own
statistics, noise on a twentieth of the images inside the training step, whitening eps 0.01;
its alternating flips happen in the input pipeline, outside the step; see
docs/recipes/robustness.md), timed side by side in one process. benchmarks/training_time.py
times whole training runs of both.

Both are trained as ``training.train_image_model`` trains them on a CPU: the flips and shifts in
the input pipeline (here applied once beforehand to fixed batches), the corruption inside the
model (``augment.model_to_train``), no XLA. Each measurement starts from a cleared session after
one warm-up step; the two recipes take turns, the other one first in every other round, so that
a shared CPU loads them alike. Synthetic CIFAR-shaped images: the step's cost does not depend on
what the pixels show.

    python benchmarks/corruption_cost.py [--steps 4] [--rounds 2] [--precision float32]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import cifar100cnn  # noqa: E402,F401  (the package's CPU set-up first, as users get it)
from third_recipes import step_seconds  # noqa: E402  (the same timing as the recipes' speed)

N_TRAIN = 40_000


def variants():
    from cifar100cnn import recipes

    return {"tuned (THIRD_TUNED)": recipes.THIRD_TUNED, "robust (THIRD_ROBUST)": recipes.THIRD_ROBUST}


def time_steps(recipe, precision, x_train, y_train, steps):
    """Seconds per training step of ``recipe`` in ``precision``, corruption included."""
    import keras

    from cifar100cnn import augment, hardware, models
    from cifar100cnn.optimization import compile_model

    keras.backend.clear_session()
    with hardware.precision_policy(precision):
        model = models.build("third_tuned", recipe, whitening_images=x_train)
        trainee = augment.model_to_train(model, recipe.augmentation, 0, "pipeline", recipe.corruption)
        compile_model(trainee, recipe, -(-N_TRAIN // recipe.batch_size), jit_compile=False)
        return step_seconds(trainee, recipe, x_train, y_train, steps)


def main(argv=None):
    import numpy as np

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4, help="timed training steps per measurement")
    p.add_argument("--rounds", type=int, default=2, help="measurements per recipe")
    p.add_argument("--precision", default="float32", help="a Keras dtype policy")
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    n = 512 * (args.steps + 1)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 100, n)
    times = {name: [] for name in variants()}
    for r in range(args.rounds):
        order = list(variants().items())
        for name, recipe in (order if r % 2 == 0 else order[::-1]):
            times[name].append(time_steps(recipe, args.precision, x, y, args.steps))
            print(f"round {r + 1}: {name}: {times[name][-1]:.2f} s per step", flush=True)
    tuned, robust = (float(np.median(v)) for v in times.values())
    print(f"RESULT precision={args.precision} step_tuned={tuned:.3f} step_robust={robust:.3f} "
          f"ratio={robust / tuned:.3f}")


if __name__ == "__main__":
    main()
