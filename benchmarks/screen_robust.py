"""Screen robust variants of the third model through the package's own training path, on
validation images only.

Each candidate is ``recipes.recipe(BASE, **overrides)`` trained exactly as ThirdModel.ipynb
trains the third model (``training.train_image_model``, the precision ``set_up_training``
picks for the machine, seed 0 unless ``--seeds`` says otherwise), saved under
``<work>/<candidate>[_seed<N>]/``, then measured in float32:
validation top-1 and accuracy under the seven corruptions of ``cifar100cnn.robustness`` on a
fixed subset of validation images. The test set is never touched. One JSON entry is appended
to ``--out`` per candidate, so a run cut short keeps what it finished.

    python benchmarks/screen_robust.py --archive ../shared/data/cifar-100-python.tar.gz \
        --no-verify --out runs/robust.json corruption=noise10,whiten_eps=0.01,input_norm=image

A candidate is comma-separated ``field=value`` overrides of the recipe (``-`` for none).
"""

import argparse
import dataclasses
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from cifar100cnn import artifacts, data, models, recipes, robustness, training, training_record  # noqa: E402

FIELDS = {field.name for field in dataclasses.fields(recipes.Recipe)}


def _value(text):
    """A recipe value from the command line: ``128/256/512`` a tuple, ``true``/``false`` a bool,
    else int, float or str."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if "/" in text:
        return tuple(int(v) for v in text.split("/"))
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _seeds(text):
    """``"1,2"`` -> ``[1, 2]``."""
    return [int(seed) for seed in text.split(",")]


def parse_overrides(text):
    """``"corruption=noise10,whiten_eps=0.01"`` -> ``{"corruption": "noise10", "whiten_eps": 0.01}``
    (``"-"``: no overrides)."""
    overrides = {}
    for pair in [] if text == "-" else text.split(","):
        key, _, value = pair.partition("=")
        if key not in FIELDS:
            raise SystemExit(f"unknown recipe field {key!r} in {text!r}; fields: {sorted(FIELDS)}")
        overrides[key] = _value(value)
    return overrides


def measure(model, dataset, subset):
    """Float32 validation top-1 and robustness on ``subset`` (indices of validation images)."""
    x, y = dataset.x_val[subset], dataset.y_val[subset]
    headline = robustness.evaluate_robustness(model, x, y, robustness.corrupted_sets(x, y),
                                              batch_size=500).headline()
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    val = model.evaluate(dataset.x_val, dataset.y_val, batch_size=500, verbose=0)[1]
    return dict(val_top1=round(float(val), 4), val_mean_corruption=headline["mean_corruption"],
                val_noise_s1=headline["noise_s1"], per_corruption=headline["per_corruption"])


def screen(candidate, dataset, base, work, subset, seed=0, verbose=2):
    """Train ``candidate`` (overrides of recipe ``base``) into its own folder under ``work``;
    its validation figures (``measure``) and how it was trained, as a dict."""
    overrides = parse_overrides(candidate)
    recipe = recipes.recipe(base, **overrides)
    setup = training.set_up_training("auto", seed=seed)
    folder = re.sub(r"[^\w.-]+", "_", candidate) + (f"_seed{seed}" if seed else "")
    models_dir = os.path.join(work, folder)
    start = time.time()
    _, history = training.train_image_model(
        "third", lambda: models.build(base, recipe, whitening_images=dataset.x_train),
        dataset, recipe, models_dir, retrain=True, seed=seed, strategy=setup.strategy,
        verbose=verbose, augment_on=setup.augment_on, jit_compile=setup.jit_compile,
        precision=setup.precision)
    minutes = (time.time() - start) / 60
    training_record.save("third", models_dir, setup.description)
    history = getattr(history, "history", history)
    # Measured as shipped: the saved float32 model.
    trained = artifacts.load_model(artifacts.model_path("third", models_dir))
    return dict(candidate=candidate, base=base, overrides={k: list(v) if isinstance(v, tuple) else v
                                                          for k, v in overrides.items()},
                seed=seed, precision=setup.precision, machine=training_record.machine(),
                training_minutes=round(minutes, 1),
                val_curve=[round(float(v), 4) for v in history["val_accuracy"]],
                **measure(trained, dataset, subset), test_set_used=False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="+", help="field=value,... overrides of the base recipe ('-': none)")
    parser.add_argument("--base", default="third_tuned", help="the recipe the overrides change")
    parser.add_argument("--archive", help="cifar-100-python.tar.gz (default: $CIFAR100_ARCHIVE or download)")
    parser.add_argument("--no-verify", action="store_true", help="skip the archive's sha256 check")
    parser.add_argument("--synthetic", type=int, default=0, help="N synthetic images instead (a smoke test)")
    parser.add_argument("--epochs", type=int, help="override every candidate's epochs (a smoke test)")
    parser.add_argument("--seeds", type=_seeds, default=[0],
                        help="comma-separated seeds: each candidate is trained once per seed (default: 0)")
    parser.add_argument("--subset", type=int, default=1000, help="validation images for robustness")
    parser.add_argument("--work", default="runs/robust", help="where the candidates' models go")
    parser.add_argument("--out", required=True, help="JSON file the results are appended to")
    args = parser.parse_args(argv)
    dataset = (data.synthetic_dataset(args.synthetic, args.synthetic // 4) if args.synthetic
               else data.load_dataset("cifar100", args.archive, verify=not args.no_verify))
    subset = robustness.fixed_subset(len(dataset.x_val), min(args.subset, len(dataset.x_val)), seed=0)
    results = json.load(open(args.out)) if os.path.exists(args.out) else []
    for candidate in args.candidates:
        if args.epochs:
            candidate = f"{candidate},epochs={args.epochs}" if candidate != "-" else f"epochs={args.epochs}"
        for seed in args.seeds:
            result = screen(candidate, dataset, args.base, args.work, subset, seed=seed)
            results.append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "machine"}), flush=True)
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
