"""Seconds per training step of the tuned third recipe under TensorFlow and JAX, side by side.

    python benchmarks/backend_speed.py [--rounds 3] [--steps 3] [--precision float32]
        [--tf-python PYTHON] [--jax-python PYTHON]

One worker process per backend (``KERAS_BACKEND``; each may use its own interpreter, e.g. a
virtual environment without TensorFlow for JAX) builds the tuned network (whitening from the
images, augmentation inside the model, so both run the same computation), compiles it with the
recipe's optimizer at the recipe's batch size (512) and warms up; then the two are asked in
turn, ``--rounds`` times, to time ``--steps`` training steps (``train_on_batch`` on uint8
batches held in memory: training steps only, no input pipeline, no validation). Alternating
spreads the noise of a shared machine over both. Prints one line per measurement and a summary
(median seconds per step, and per epoch of 40,000 images) as a JSON line starting "RESULT".
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES_PER_EPOCH = 40_000  # the training split


def worker(precision, seed=0):
    """Build, compile and warm up; then answer "steps N" lines with the seconds they took."""
    import numpy as np

    from cifar100cnn import augment, hardware, models, optimization, recipes, training

    recipe = recipes.THIRD_TUNED
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (2 * recipe.batch_size, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 100, 2 * recipe.batch_size).astype(np.int32)
    hardware.set_seed(seed)
    with hardware.precision_policy(precision):
        model = models.build_third("tuned", whitening_images=x)
        trainee = augment.model_to_train(model, recipe.augmentation, seed, "model")
    jit = training.use_jit("auto")
    steps_per_epoch = IMAGES_PER_EPOCH // recipe.batch_size
    with training.xla_allowed(jit):
        optimization.compile_model(trainee, recipe, steps_per_epoch, jit_compile=jit)
        batches = [(x[i:i + recipe.batch_size], y[i:i + recipe.batch_size])
                   for i in range(0, len(x), recipe.batch_size)]
        for images, labels in batches:  # warm-up: tracing and compilation
            trainee.train_on_batch(images, labels)
        print(json.dumps({"ready": hardware.versions(), "jit": jit}), flush=True)
        for line in sys.stdin:
            steps = int(line.split()[1])
            started = time.perf_counter()
            for step in range(steps):
                trainee.train_on_batch(*batches[step % len(batches)])  # returns floats: synced
            print(json.dumps({"seconds": time.perf_counter() - started, "steps": steps}),
                  flush=True)


def start(backend, python, precision):
    env = dict(os.environ, KERAS_BACKEND=backend)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    process = subprocess.Popen([python, os.path.abspath(__file__), "--worker", "--precision",
                                precision], env=env, cwd=ROOT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, bufsize=1)
    return process, read(process)


def read(process):
    for line in process.stdout:
        if line.startswith("{"):
            return json.loads(line)
    raise SystemExit(f"a worker stopped (exit status {process.wait()})")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="training steps timed per round")
    parser.add_argument("--precision", default="float32",
                        choices=("float32", "mixed_bfloat16", "mixed_float16"))
    parser.add_argument("--tf-python", default=sys.executable)
    parser.add_argument("--jax-python", default=sys.executable)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args.precision)
    workers = {}
    for backend, python in (("tensorflow", args.tf_python), ("jax", args.jax_python)):
        workers[backend], ready = start(backend, python, args.precision)
        print(f"{backend}: {ready['ready']}, jit_compile={ready['jit']}", flush=True)
    per_step = {backend: [] for backend in workers}
    for round_ in range(args.rounds):
        for backend, process in workers.items():
            process.stdin.write(f"steps {args.steps}\n")
            process.stdin.flush()
            seconds = read(process)["seconds"] / args.steps
            per_step[backend].append(seconds)
            print(f"round {round_ + 1} {backend}: {seconds:.3f} s/step", flush=True)
    for process in workers.values():
        process.stdin.close()
        process.wait()
    steps_per_epoch = IMAGES_PER_EPOCH / 512
    summary = {backend: {"s_per_step": round(statistics.median(values), 3),
                         "s_per_epoch": round(statistics.median(values) * steps_per_epoch, 1),
                         "all_s_per_step": [round(v, 3) for v in values]}
               for backend, values in per_step.items()}
    print("RESULT " + json.dumps({"precision": args.precision, **summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
