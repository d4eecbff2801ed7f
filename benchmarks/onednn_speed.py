"""TensorFlow's oneDNN kernels against its Eigen kernels on this CPU, side by side.

TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` once, when it is imported, so each measurement runs
in a fresh process with the variable set to 0 or 1; the two settings take turns, in reverse
order every other round, so that a machine shared with other work slows both alike. Each
process times the tuned third model in float32 (``train_on_batch`` on a fixed batch of 512
after one warm-up step; ``predict_on_batch`` on 2,000 images in batches of 500) on synthetic
CIFAR-shaped data (speed does not depend on content).

    python benchmarks/onednn_speed.py [--steps 3] [--rounds 2]   # about 4 minutes on 2 cores
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = ("0", "1")


def measure(steps):
    """One measurement in this process: images per second, training and inference."""
    sys.path.insert(0, ROOT)
    from tensorflow.python.util import _pywrap_util_port as port

    from cifar100cnn import data, models, recipes
    from cifar100cnn.optimization import compile_model

    x_train, y_train = data.make_synthetic(2048, 16, seed=0)[0]
    recipe = recipes.THIRD_TUNED
    model = models.build_third_tuned(recipe.widths, models.whitening_kernel(x_train))
    compile_model(model, recipe, 79, jit_compile=False)
    images, labels = x_train[:recipe.batch_size].astype("float32"), y_train[:recipe.batch_size]
    model.train_on_batch(images, labels)  # warm-up: tracing, kernel set-up
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(images, labels)
    train = steps * recipe.batch_size / (time.perf_counter() - start)
    val = x_train[:2000].astype("float32")
    model.predict_on_batch(val[:500])
    start = time.perf_counter()
    for i in range(0, len(val), 500):
        model.predict_on_batch(val[i:i + 500])
    predict = len(val) / (time.perf_counter() - start)
    return dict(onednn=bool(port.IsMklEnabled()), train_images_per_s=train, predict_images_per_s=predict)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def run_child(setting, steps):
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": setting, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, __file__, "--child", "--steps", str(steps)], env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per measurement (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per setting (default 2)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.steps)))
        return 0
    samples = {setting: [] for setting in SETTINGS}
    for round_ in range(args.rounds):
        for setting in (SETTINGS if round_ % 2 == 0 else SETTINGS[::-1]):
            result = run_child(setting, args.steps)
            samples[setting].append(result)
            print(f"TF_ENABLE_ONEDNN_OPTS={setting}: {json.dumps(result)}", flush=True)
    print(f"\n{cpu_name()}, {os.cpu_count()} cores; tuned third model, float32, synthetic data; "
          f"median of {args.rounds}; `python benchmarks/onednn_speed.py --steps {args.steps} "
          f"--rounds {args.rounds}`:\n")
    print("| TF_ENABLE_ONEDNN_OPTS | oneDNN on | training, images/s | prediction, images/s |")
    print("|---|---|---:|---:|")
    for setting, results in samples.items():
        print(f"| {setting} | {results[0]['onednn']} | "
              f"{statistics.median(r['train_images_per_s'] for r in results):.0f} | "
              f"{statistics.median(r['predict_images_per_s'] for r in results):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
