"""Screen recipes for the third model: train each candidate on the original 40,000 / 10,000
split, report validation top-1 (used to choose), test top-1 (reported, never used to choose)
and seconds per epoch. Candidates are "new" (the whitened three-block CNN, ``arch="fast"``,
today's ``models.build_third_tuned``) or "old" (the ResNet-9) with overrides.

Backend-agnostic Keras: it runs under TensorFlow here and under JAX on a GPU machine whose
image has no TensorFlow. Results are appended to a JSON file after every candidate, so a run
cut short keeps what it finished.

    python benchmarks/screen_third.py --archive ../shared/data/cifar-100-python.tar.gz \
        --no-verify --candidates fast_e10 old_e30 --out runs/screen.json
"""

import argparse
import dataclasses
import json
import os
import sys
import time

import keras
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from cifar100cnn import augment, data, models, recipes  # noqa: E402
from cifar100cnn.optimization import compile_model  # noqa: E402

OLD = dict(arch="resnet9", width=32, dropout=0.2, epochs=30, batch_size=128, optimizer="sgd",
           learning_rate=0.1, momentum=0.9, weight_decay=5e-4, label_smoothing=0.1,
           augmentation="resnet9")
NEW = dict(arch="fast", widths=(96, 192, 384), whiten=True, activation="relu", epochs=10,
           batch_size=512, optimizer="sgd", learning_rate=0.4, momentum=0.9, weight_decay=5e-4,
           label_smoothing=0.2, augmentation="tuned", warmup=0.15)


# The shipped tuned recipe; "+corruption=<preset of augment.CORRUPTIONS>" and "+whiten_eps=..."
# screen it for robustness.
TUNED = dict(NEW, widths=(128, 256, 512), epochs=16, learning_rate=1.2, weight_decay=0.01)


def candidates():
    grid = {"new_e30": dict(NEW, epochs=30), "tuned": dict(TUNED)}
    for e in (5, 10, 20):
        grid[f"new_e{e}"] = dict(NEW, epochs=e)
    grid["new_e10_lr0.8"] = dict(NEW, learning_rate=0.8)
    grid["new_e10_lr0.2"] = dict(NEW, learning_rate=0.2)
    grid["new_e10_wd5e-3"] = dict(NEW, weight_decay=5e-3)
    grid["new_e10_nowhiten"] = dict(NEW, whiten=False)
    grid["new_e10_ema"] = dict(NEW, ema_momentum=0.99)
    grid["new_e10_gelu"] = dict(NEW, activation="gelu")
    grid["new_e10_shift4"] = dict(NEW, augmentation="resnet9")
    grid["new_e10_w128"] = dict(NEW, widths=(128, 256, 512))
    for e in (10, 30):
        grid[f"old_e{e}"] = dict(OLD, epochs=e)
    return grid


def parse_candidate(name, grid):
    """A grid name, or ``base+key=value+...`` (e.g. ``new+epochs=30+learning_rate=0.8``;
    widths as ``128/256/512``)."""
    base, *pairs = name.split("+")
    c = dict(grid[base] if base in grid else {"new": NEW, "old": OLD}[base])
    for pair in pairs:
        key, value = pair.split("=")
        if key not in c and key not in ("ema_momentum", "corruption", "whiten_eps"):
            raise ValueError(f"unknown recipe key {key!r} in {name!r}")
        c[key] = (tuple(int(v) for v in value.split("/")) if key == "widths"
                  else value if key in ("activation", "augmentation", "arch", "corruption") else
                  value == "True" if key == "whiten" else float(value) if "." in value or "e" in value
                  else int(value))
    return c


def as_recipe(c):
    """The ``recipes.Recipe`` of candidate ``c`` (its training fields)."""
    fields = {field.name for field in dataclasses.fields(recipes.Recipe)}
    return recipes.Recipe(**{key: value for key, value in c.items() if key in fields})


def build(c, x_train):
    if c["arch"] == "resnet9":
        return models.build_resnet9(c["width"], c["dropout"])
    eps = c.get("whiten_eps", 5e-4)
    whitening = models.whitening_kernel(x_train, eps=eps) if c["whiten"] else None
    return models.build_third_tuned(c["widths"], whitening, c["activation"])


def run(name, c, d, seed=0):
    keras.utils.set_random_seed(seed)
    model = build(c, d["x_train"])
    augmentation = augment.build_augmentation(c["augmentation"], seed=seed, xla=True)
    inputs = keras.Input(shape=(32, 32, 3))
    x = augmentation(inputs)
    if c.get("corruption"):
        x = augment.build_corruption(c["corruption"], seed=seed)(x)
    trainee = keras.Model(inputs, model(x))
    steps = -(-len(d["x_train"]) // c["batch_size"])
    compile_model(trainee, as_recipe(c), steps)
    times = []
    timer = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda e, logs: times.append(time.time()),
        on_epoch_end=lambda e, logs: times.__setitem__(-1, time.time() - times[-1]))
    start = time.time()
    hist = trainee.fit(d["x_train"], d["y_train"], batch_size=c["batch_size"], epochs=c["epochs"],
                       validation_data=(d["x_val"], d["y_val"]), callbacks=[timer], verbose=0)
    wall = time.time() - start
    # After fit the EMA weights (when used) are in the model; evaluate those.
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    val = model.evaluate(d["x_val"], d["y_val"], batch_size=1000, verbose=0)[1]
    test = model.evaluate(d["x_test"], d["y_test"], batch_size=1000, verbose=0)[1] if "x_test" in d else None
    robust = {}
    if d.get("robust_sets"):
        from cifar100cnn import robustness

        r = robustness.evaluate_robustness(model, d["robust_x"], d["robust_y"], d["robust_sets"],
                                           name=name, batch_size=1000)
        headline = r.headline(digits=6)
        robust = dict(val_subset_clean=r.clean, val_mean_corruption=headline["mean_corruption"],
                      val_noise_s1=headline["noise_s1"],
                      val_corruption_means=headline["per_corruption"])
    return dict(name=name, **robust, recipe={k: list(v) if isinstance(v, tuple) else v for k, v in c.items()},
                val_accuracy=float(val), test_accuracy=None if test is None else float(test),
                val_curve=[float(v) for v in hist.history["val_accuracy"]],
                history={k: [float(v) for v in values] for k, values in hist.history.items()},
                epoch_seconds=times, first_epoch_seconds=times[0],
                median_epoch_seconds=float(np.median(times[1:] or times)), wall_seconds=wall,
                forward_mflop=models.forward_flops(model) / 1e6, backend=keras.backend.backend(),
                precision=keras.mixed_precision.global_policy().name), model


def choose(results, tolerance=0.005, count=2):
    """The names of the ``count`` most robust candidates whose validation top-1 is within
    ``tolerance`` of the first (the reference), by mean validation accuracy under corruption;
    then the others by validation top-1. Validation only: the test set chooses nothing."""
    floor = results[0]["val_accuracy"] - tolerance
    eligible = sorted((r for r in results if r["val_accuracy"] >= floor),
                      key=lambda r: -r.get("val_mean_corruption", 0.0))
    rest = sorted((r for r in results if r["val_accuracy"] < floor), key=lambda r: -r["val_accuracy"])
    return [r["name"] for r in eligible + rest][:count]


def load_packed(parts):
    """The original split from the folders that ``pack_cifar.py pack`` writes (lossless WebP
    mosaics: a transport format that fits a GPU machine's upload limit)."""
    from pack_cifar import read_parts

    images, labels, _ = read_parts(parts)
    y_train = labels["train_fine"]
    return dict(x_train=images[:40000], y_train=y_train[:40000], x_val=images[40000:50000],
                y_val=y_train[40000:50000], x_test=images[50000:], y_test=labels["test_fine"])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archive"), p.add_argument("--packed", nargs="+"), p.add_argument("--no-verify", action="store_true")
    p.add_argument("--synthetic", type=int, default=0, help="N synthetic images instead (a smoke test)")
    p.add_argument("--candidates", nargs="*", default=None)
    p.add_argument("--epochs", type=int, default=None, help="override every candidate's epochs")
    p.add_argument("--precision", default="mixed_bfloat16")
    p.add_argument("--deadline", type=float, default=1e9, help="seconds; skip candidates after it")
    p.add_argument("--train-subset", type=int, default=0, help="train on the first N training images only")
    p.add_argument("--robustness", type=int, default=0,
                   help="also measure robustness on a fixed subset of N validation images")
    p.add_argument("--save-chosen", metavar="DIR",
                   help="save the models that `choose` picks as DIR/<rank>.keras")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    keras.mixed_precision.set_global_policy(a.precision)
    if a.packed:
        d = load_packed(a.packed)
    else:
        ds = (data.synthetic_dataset(a.synthetic, a.synthetic // 4) if a.synthetic
              else data.load_dataset("cifar100", a.archive, verify=not a.no_verify))
        d = dict(x_train=ds.x_train, y_train=ds.y_train, x_val=ds.x_val, y_val=ds.y_val,
                 x_test=ds.x_test, y_test=ds.y_test)
    if a.train_subset:
        d["x_train"], d["y_train"] = d["x_train"][:a.train_subset], d["y_train"][:a.train_subset]
    if a.robustness:
        from cifar100cnn import robustness

        keep = robustness.fixed_subset(len(d["x_val"]), a.robustness, seed=0)
        d["robust_x"], d["robust_y"] = d["x_val"][keep], d["y_val"][keep]
        d["robust_sets"] = robustness.corrupted_sets(d["robust_x"], d["robust_y"])
    print({k: v.shape for k, v in d.items() if hasattr(v, "shape")}, flush=True)
    grid = candidates()
    names = a.candidates or list(grid)
    results, trained, start = [], {}, time.time()
    for name in names:
        if time.time() - start > a.deadline:
            print(f"skipped {name}: past the deadline", flush=True)
            continue
        c = dict(parse_candidate(name, grid), **({"epochs": a.epochs} if a.epochs else {}))
        r, trained[name] = run(name, c, d)
        results.append(r)
        print(f"{name}: val {r['val_accuracy']:.4f} test {r['test_accuracy']} "
              f"val-corrupted {r.get('val_mean_corruption')} val-noise-s1 {r.get('val_noise_s1')} "
              f"epoch {r['median_epoch_seconds']:.1f}s (first {r['first_epoch_seconds']:.1f}s) "
              f"curve {[round(v, 3) for v in r['val_curve']]}", flush=True)
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
    if a.save_chosen and results:
        os.makedirs(a.save_chosen, exist_ok=True)
        for rank, name in enumerate(choose(results), 1):
            trained[name].save_weights(os.path.join(a.save_chosen, f"{rank}.weights.h5"))
            print(f"chosen {rank}: {name}", flush=True)


if __name__ == "__main__":
    main()
