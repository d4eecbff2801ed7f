"""The whole default pipeline, retrained, timed on one machine (meant for a GPU under JAX).

    KERAS_BACKEND=jax python benchmarks/gpu_pipeline.py --archive cifar-100-python.tar.gz \
        --no-verify --out gpu_run
    python benchmarks/gpu_pipeline.py --dry --out dry_run   # CPU, quick mode: a check of this script

It runs ``python -m cifar100cnn run --retrain`` (the four notebooks, every recipe at its own
batch size and epochs) and writes ``gpu_pipeline.json`` and ``gpu_pipeline.md`` under ``--out``:
wall time per notebook, training time and seconds per epoch per model (from the history files),
test accuracies (from ``results.csv``), the device, backend, precision and versions. VGG16 needs
its ImageNet weights (``--vgg16-weights FILE``); without them it is skipped, and the report says
so. ``--dry`` runs the same code on the CPU in quick mode (tiny synthetic data, one epoch per
model; VGG16 skipped alike) with a tiny fake archive passed along; its figures say nothing
about any GPU.

This process imports neither Keras nor JAX: the notebooks' kernels get the accelerator to
themselves (JAX reserves most of a GPU's memory in the first process that touches it).
"""

import argparse
import csv
import glob
import importlib.metadata
import io
import json
import os
import pickle
import platform
import re
import subprocess
import sys
import tarfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {  # history file -> the model's name in the report
    "cifar100_basic_cnn": "baseline", "cifar100_overfit_cnn": "overfit",
    "cifar100_third_original_cnn": "third_original", "cifar100_third_cnn": "third",
    "cifar100_vgg16_cnn": "vgg16",
}
VERSIONS = ("keras", "jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "torch",
            "tensorflow", "numpy", "scikit-learn", "papermill", "keras-tuner")
# Printed by the package's hardware description: "<backend> <version>, Keras <version>; ...".
DEVICE_PROBE = ("import json; from cifar100cnn import hardware; "
                "h = hardware.set_up_hardware(); "
                "print('PROBE' + json.dumps({'backend': hardware.backend(), "
                "'gpus': hardware.gpu_names(), 'precision': h.precision, "
                "'description': h.description}))")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder of the run and of the report")
    parser.add_argument("--archive", default=None, help="cifar-100-python.tar.gz")
    parser.add_argument("--no-verify", action="store_true", help="skip the archive's sha256 check")
    parser.add_argument("--vgg16-weights", default=None,
                        help="VGG16's ImageNet weights (.h5); without them VGG16 is skipped")
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"),
                        help="KERAS_BACKEND of the run (default: $KERAS_BACKEND, else jax)")
    parser.add_argument("--precision", default="auto", help="the run's --precision")
    parser.add_argument("--dry", action="store_true",
                        help="CPU only, quick mode, a tiny fake archive: checks this script")
    parser.add_argument("--notebooks", nargs="*", default=None,
                        help="only these notebooks (default: all four)")
    return parser.parse_args(argv)


def write_fake_archive(path, n_train=60, n_test=20, seed=0):
    """A tiny archive in the official layout (random pixels), for ``--dry``."""
    rng = np.random.default_rng(seed)
    members = {}
    for split, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, n)
        members[split] = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                          b"fine_labels": fine.tolist(), b"coarse_labels": (fine // 5).tolist()}
    members["meta"] = {b"fine_label_names": [], b"coarse_label_names": []}
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            payload = pickle.dumps(content, protocol=4)
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def run_environment(args):
    """The environment of the run: the backend, the package importable, and for ``--dry``
    the CPU alone."""
    env = dict(os.environ, KERAS_BACKEND=args.backend)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    if args.dry:
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    return env


def probe_device(env):
    """Backend, GPUs, the precision "auto" picks and the package's hardware line, from a
    short-lived child process (so that this one never holds the GPU)."""
    done = subprocess.run([sys.executable, "-c", DEVICE_PROBE], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    for line in done.stdout.splitlines():
        if line.startswith("PROBE"):
            return json.loads(line[len("PROBE"):])
    raise SystemExit(f"could not describe the device:\n{done.stderr[-2000:]}")


def pipeline_command(args, out, archive):
    """``python -m cifar100cnn run ...`` for this benchmark."""
    command = [sys.executable, "-m", "cifar100cnn", "run", "--retrain", "--out", out,
               "--precision", args.precision]
    if args.notebooks:
        command += ["--notebooks", *args.notebooks]
    if archive:
        command += ["--archive", archive]
    if args.no_verify or args.dry:
        command.append("--no-verify")
    if args.dry:
        command.append("--quick")
    if args.vgg16_weights:
        command += ["--vgg16-weights", args.vgg16_weights]
    else:  # a file that is not there: VGG16 is skipped at once, no download is tried
        command += ["--vgg16-weights", os.path.join(out, "no-vgg16-imagenet-weights.h5")]
    return command


# The CLI's line as a notebook starts: "[2/4] ThirdModel.ipynb" (earlier "=== ... ===").
NOTEBOOK_START = re.compile(r"^(?:\[\d+/\d+\] (\w+\.ipynb)|=== (\w+\.ipynb) ===)(?:\s.*)?$")


def run_pipeline(command, env, log_path):
    """Run ``command``, its output teed to ``log_path``.

    Returns:
        ``(exit status, wall seconds, {notebook: seconds})``: each notebook's time from its
        start line to the next one's (or the end), kernel start included; a notebook that
        failed is timed too.
    """
    started = time.time()
    times, current, since = {}, None, started
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in process.stdout:
            sys.stdout.write(line)
            log.write(line)
            match = NOTEBOOK_START.match(line.strip())
            if match:
                if current:
                    times[current] = round(time.time() - since, 1)
                current, since = match.group(1) or match.group(2), time.time()
        status = process.wait()
    if current:
        times[current] = round(time.time() - since, 1)
    return status, time.time() - started, times


def model_timings(models_dir, since=0.0):
    """Per model trained since ``since`` (a time stamp; a CIFAR-100 run starts from copies of
    the committed models, which are older): epochs, training seconds, the first epoch's
    (compilation included) and the median of the others, from ``<name>.history.json``."""
    timings = {}
    for path in sorted(glob.glob(os.path.join(models_dir, "*.history.json"))):
        if os.path.getmtime(path) < since:
            continue
        stem = os.path.basename(path)[:-len(".history.json")]
        with open(path) as f:
            seconds = [s for s in json.load(f).get("seconds", []) if s is not None]
        if not seconds:
            continue
        timings[MODELS.get(stem, stem)] = {
            "epochs": len(seconds), "train_s": round(sum(seconds), 1),
            "first_epoch_s": round(seconds[0], 2),
            "epoch_s": round(float(np.median(seconds[1:] or seconds)), 3)}
    return timings


def test_results(models_dir):
    """``results.csv`` (TestModels): per model, its test top-1 and top-5."""
    path = os.path.join(models_dir, "results.csv")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {row["model"]: {key: float(row[key]) for key in ("top1", "top5") if row.get(key)}
                for row in csv.DictReader(f)}


def versions():
    found = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return found


def markdown(report):
    """The report as a short markdown page."""
    lines = [f"# Whole pipeline, retrained: {report['device']}", "",
             f"- data: {report['data']}",
             f"- backend {report['backend']}, precision {report['precision']}; "
             f"{report['hardware']}",
             f"- command: `{report['command']}`",
             f"- whole pipeline: {report['wall_s']:.0f} s (exit status {report['status']})"]
    if report["vgg16_skipped"]:
        lines.append("- VGG16 not retrained: no ImageNet weights on this machine "
                     "(--vgg16-weights FILE includes it); a test row for it is the committed "
                     "model's")
    lines += ["", "| notebook | wall s |", "|---|---:|"]
    lines += [f"| {name} | {seconds} |" for name, seconds in report["notebooks"].items()]
    lines += ["", "| model | epochs | training s | first epoch s | s/epoch | test top-1 | "
              "test top-5 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in sorted(set(report["models"]) | set(report["test"])):
        timing, result = report["models"].get(name), report["test"].get(name, {})
        cells = ([timing["epochs"], timing["train_s"], timing["first_epoch_s"], timing["epoch_s"]]
                 if timing else ["not retrained", "", "", ""])
        lines.append(f"| {name} | " + " | ".join(str(c) for c in cells) +
                     f" | {result.get('top1', '')} | {result.get('top5', '')} |")
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items())]
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    archive = os.path.abspath(args.archive) if args.archive else None
    if args.dry:
        archive = write_fake_archive(os.path.join(out, "fake-cifar-100-python.tar.gz"))
    elif not archive:
        raise SystemExit("--archive PATH is needed (the machine may have no internet), "
                         "or --dry for a check of this script on the CPU")
    env = run_environment(args)
    device = probe_device(env)
    print(device["description"], flush=True)
    command = pipeline_command(args, os.path.join(out, "run"), archive)
    started = time.time()
    status, wall, notebooks = run_pipeline(command, env, os.path.join(out, "pipeline.log"))
    models_dir = os.path.join(out, "run", "models")
    timings = model_timings(models_dir, since=started)
    report = {
        "device": ", ".join(device["gpus"]) or f"CPU ({platform.processor() or platform.machine()})",
        "backend": device["backend"], "precision": device["precision"],
        "hardware": device["description"],
        "data": ("quick mode: tiny synthetic data, NOT CIFAR-100 (--dry)" if args.dry else
                 "CIFAR-100 from " + os.path.basename(archive)),
        "command": " ".join(command[1:]), "status": status, "wall_s": round(wall, 1),
        "notebooks": notebooks, "models": timings,
        "test": test_results(models_dir),
        # Not retrained: its test figures (if any) are the committed model's.
        "vgg16_skipped": "vgg16" not in timings,
        "versions": versions(),
    }
    with open(os.path.join(out, "gpu_pipeline.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(out, "gpu_pipeline.md"), "w") as f:
        f.write(markdown(report))
    print("\n" + markdown(report))
    return status


if __name__ == "__main__":
    sys.exit(main())
