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


def candidates():
    grid = {"new_e30": dict(NEW, epochs=30)}
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
        if key not in c and key != "ema_momentum":
            raise ValueError(f"unknown recipe key {key!r} in {name!r}")
        c[key] = (tuple(int(v) for v in value.split("/")) if key == "widths"
                  else value if key in ("activation", "augmentation", "arch") else
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
    whitening = models.whitening_kernel(x_train[:5000]) if c["whiten"] else None
    return models.build_third_tuned(c["widths"], whitening, c["activation"])


def run(name, c, d, seed=0):
    keras.utils.set_random_seed(seed)
    model = build(c, d["x_train"])
    augmentation = augment.build_augmentation(c["augmentation"], seed=seed, xla=True)
    inputs = keras.Input(shape=(32, 32, 3))
    trainee = keras.Model(inputs, model(augmentation(inputs)))
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
    return dict(name=name, recipe={k: list(v) if isinstance(v, tuple) else v for k, v in c.items()},
                val_accuracy=float(val), test_accuracy=None if test is None else float(test),
                val_curve=[float(v) for v in hist.history["val_accuracy"]],
                epoch_seconds=times, first_epoch_seconds=times[0],
                median_epoch_seconds=float(np.median(times[1:] or times)), wall_seconds=wall,
                forward_mflop=models.forward_flops(model) / 1e6, backend=keras.backend.backend(),
                precision=keras.mixed_precision.global_policy().name)


def load_packed(folder):
    """The split as WebP-lossless mosaics of 1,000 images (a transport format that fits the
    GPU machine's upload limit): files named by their first index, plus labels.npz."""
    from PIL import Image

    tiles = {}
    for sub in sorted(os.listdir(folder)):
        path = os.path.join(folder, sub)
        for f in sorted(os.listdir(path)) if os.path.isdir(path) else []:
            if f.endswith(".webp"):
                m = np.asarray(Image.open(os.path.join(path, f)).convert("RGB"))
                tiles[int(f[:-5])] = m.reshape(25, 32, 40, 32, 3).transpose(0, 2, 1, 3, 4).reshape(1000, 32, 32, 3)
            elif f == "labels.npz":
                labels = dict(np.load(os.path.join(path, f)))
    x = np.concatenate([tiles[k] for k in sorted(tiles)])
    d = dict(x_train=x[:40000], x_val=x[40000:50000], y_train=labels["y_train"], y_val=labels["y_val"])
    if len(x) > 50000:
        d.update(x_test=x[50000:60000], y_test=labels["y_test"])
    return d


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--archive"), p.add_argument("--packed"), p.add_argument("--no-verify", action="store_true")
    p.add_argument("--synthetic", type=int, default=0, help="N synthetic images instead (a smoke test)")
    p.add_argument("--candidates", nargs="*", default=None)
    p.add_argument("--epochs", type=int, default=None, help="override every candidate's epochs")
    p.add_argument("--precision", default="mixed_bfloat16")
    p.add_argument("--deadline", type=float, default=1e9, help="seconds; skip candidates after it")
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
    print({k: v.shape for k, v in d.items()}, flush=True)
    grid = candidates()
    names = a.candidates or list(grid)
    results, start = [], time.time()
    for name in names:
        if time.time() - start > a.deadline:
            print(f"skipped {name}: past the deadline", flush=True)
            continue
        c = dict(parse_candidate(name, grid), **({"epochs": a.epochs} if a.epochs else {}))
        r = run(name, c, d)
        results.append(r)
        print(f"{name}: val {r['val_accuracy']:.4f} test {r['test_accuracy']} "
              f"epoch {r['median_epoch_seconds']:.1f}s (first {r['first_epoch_seconds']:.1f}s) "
              f"curve {[round(v, 3) for v in r['val_curve']]}", flush=True)
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
