"""Where the earlier speed benchmark's time went: a few steps of ``model.fit`` on the augmenting
tf.data pipeline, timed as a whole (as ``benchmarks/third_recipes.py speed`` once did), against
the same steps timed one by one from inside the fit (a callback at each batch's start and end).

Each round builds the earlier ResNet-9 and the tuned third model afresh, runs a 2-step warm-up
fit and then a timed fit of ``--steps`` steps, in float32, on synthetic CIFAR-shaped data. The
difference between the whole fit and the sum of its steps is fit's own cost around the steps:
divided by a few steps, it inflates the time per step.

    python benchmarks/fit_overhead.py [--steps 6] [--rounds 3]   # about 4 minutes on 2 cores
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cifar100cnn import augment, data, models, recipes, tf_pipeline  # noqa: E402  (first: oneDNN)
from cifar100cnn.optimization import compile_model  # noqa: E402

import keras  # noqa: E402


class BatchClock(keras.callbacks.Callback):
    """Seconds from the start of training to each batch's start and end."""

    def on_train_begin(self, logs=None):
        self.start, self.steps, self.first = time.perf_counter(), [], None

    def on_train_batch_begin(self, batch, logs=None):
        self.begun = time.perf_counter()
        if self.first is None:
            self.first = self.begun - self.start

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append(time.perf_counter() - self.begun)


def build(name, x_train):
    recipe = recipes.RECIPES[name]
    if name == "third_tuned":
        return recipe, models.build_third_tuned(recipe.widths, models.whitening_kernel(x_train))
    return recipe, models.build_resnet9(recipe.width, recipe.dropout)


def measure(name, x, y, steps):
    recipe, model = build(name, x)
    pipeline = tf_pipeline.make_pipeline(x, y, recipe.batch_size, shuffle=True,
                                         augment=augment.build_augmentation(recipe.augmentation, seed=0))
    compile_model(model, recipe, steps, jit_compile=False)
    model.fit(pipeline, steps_per_epoch=2, epochs=1, verbose=0)  # warm-up, as the earlier script
    clock = BatchClock()
    start = time.perf_counter()
    model.fit(pipeline, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[clock])
    whole = time.perf_counter() - start
    return whole, sum(clock.steps), clock.first


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per fit (default 6)")
    parser.add_argument("--rounds", type=int, default=3, help="fits per recipe (default 3)")
    args = parser.parse_args(argv)
    x, y = data.make_synthetic(4096, 16, seed=0)[0]
    print("| round | recipe | whole fit / step (s) | steps alone / step (s) | "
          "fit's own cost (s) | of it before the first step (s) |")
    print("|---|---|---:|---:|---:|---:|")
    for round_ in range(args.rounds):
        for name in ("third_resnet9", "third_tuned"):
            whole, steps, first = measure(name, x, y, args.steps)
            print(f"| {round_} | {name} | {whole / args.steps:.2f} | {steps / args.steps:.2f} | "
                  f"{whole - steps:.1f} | {first:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
