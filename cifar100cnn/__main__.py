"""``python -m cifar100cnn run``: execute the four notebooks in order with papermill.
``python -m cifar100cnn predict IMAGE...``: the top-5 classes of your own images."""

import argparse
import os
import sys
import time

from . import environment

NOTEBOOKS = ("TrainingModels.ipynb", "ThirdModel.ipynb", "TestModels.ipynb", "VisualizeModel.ipynb")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cifar100cnn",
                                     description="CIFAR-100 CNN pipeline (four notebooks).")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="execute the four notebooks in order")
    run.add_argument("--quick", action="store_true",
                     help="tiny synthetic data and 1-2 epochs: a smoke test of the whole pipeline")
    run.add_argument("--data", choices=("cifar100", "synthetic"), default="cifar100",
                     help="data source (default: cifar100)")
    run.add_argument("--out", default=None,
                     help="folder for models/, arrays/, figures/ and executed/ (default: the repo; "
                          "runs/quick or runs/synthetic for those modes, so that they never "
                          "reuse or overwrite the CIFAR-100 models)")
    run.add_argument("--archive", default=None,
                     help="local cifar-100-python.tar.gz (default: $CIFAR100_ARCHIVE, else download)")
    run.add_argument("--no-verify", action="store_true",
                     help="skip the sha256 check of a local archive ($CIFAR100_VERIFY=0 does the same)")
    run.add_argument("--vgg16-weights", default="imagenet",
                     help="'imagenet' (download), a local .h5 file ($VGG16_WEIGHTS), or 'none' (random)")
    run.add_argument("--vgg16-finetune", action="store_true",
                     help="after the head, unfreeze VGG16 block 5 and train at a low rate (GPU advised)")
    run.add_argument("--vgg16-input-size", type=int, default=None,
                     help="upscale images to this size for VGG16 (32-224; default: the recipe's 32, "
                          "as the original)")
    run.add_argument("--third-preset", choices=("tuned", "original"), default="tuned")
    run.add_argument("--third-epochs", type=int, default=None,
                     help="epochs of the third model (default: its preset's; for the tuned "
                          "recipe, 10-12 fit the earlier recipe's float32 time on CPUs without "
                          "bf16)")
    run.add_argument("--precision", default="auto",
                     choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"),
                     help="training precision (default auto: mixed_float16 on a GPU, mixed_bfloat16 "
                          "on CPUs with AMX or AVX512-BF16, else float32); saved models are float32")
    run.add_argument("--force-gpu-paths", action="store_true",
                     help="train with every GPU-only path at once, also on a CPU: mixed_float16 "
                          "with loss scaling, XLA, augmentation inside the model, "
                          "MirroredStrategy (over 2 logical devices on a CPU); a check that they "
                          "work together (with --quick: minutes)")
    run.add_argument("--retrain", action="store_true", help="train again even if a model exists")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--notebooks", nargs="*", default=list(NOTEBOOKS),
                     help="which notebooks to run (default: all four, in order)")
    add_predict_parser(commands)
    return parser.parse_args(argv)


def add_predict_parser(commands):
    from .artifacts import MODEL_FILES

    predict = commands.add_parser("predict", help="the top-5 classes of your own images")
    predict.add_argument("images", nargs="+", metavar="IMAGE",
                         help="image files in any format Pillow reads; each is resized (shorter "
                              "side to 32 pixels) and centre-cropped to 32x32")
    predict.add_argument("--model", choices=list(MODEL_FILES), default="third",
                         help="which saved model (default: third)")
    predict.add_argument("--models-dir", default=os.path.join(REPO_ROOT, "models"),
                         help="folder of the saved models (default: the repository's models/)")
    predict.add_argument("--model-file", default=None,
                         help="a .keras file to use instead of --model/--models-dir")
    predict.add_argument("--labels", choices=("cifar100", "synthetic"), default="cifar100",
                         help="class names: 'synthetic' for models of quick or synthetic runs")
    predict.add_argument("--top", type=int, default=5, help="classes listed per image (default: 5)")
    predict.add_argument("--verbose", action="store_true",
                         help="show TensorFlow's start-up log (hidden by default)")


def output_folder(args):
    """Where a run writes: ``--out``, else the repo for CIFAR-100, else a folder of its own."""
    if args.out:
        return os.path.abspath(args.out)
    if args.quick:
        return os.path.join(REPO_ROOT, "runs", "quick")
    if args.data == "synthetic":
        return os.path.join(REPO_ROOT, "runs", "synthetic")
    return REPO_ROOT


def notebook_parameters(args, environ=None):
    """The papermill parameters of a run: the options, completed by the environment variables
    (``environment.archive_settings``, ``environment.vgg16_weights``); each notebook is given
    those it declares.

    Args:
        args: the parsed ``run`` options.
        environ: the environment (default ``os.environ``).
    """
    archive, verify = environment.archive_settings(args.archive, not args.no_verify, environ)
    weights = None if str(args.vgg16_weights).lower() == "none" else args.vgg16_weights
    return {
        "data_source": args.data,
        "archive": os.path.abspath(archive) if archive else None,
        "verify_archive": verify,
        "quick": args.quick,
        "output_dir": output_folder(args),
        "vgg16_weights": environment.vgg16_weights(weights, args.quick, environ),
        "vgg16_finetune": args.vgg16_finetune,
        "vgg16_input_size": args.vgg16_input_size,
        "third_preset": args.third_preset,
        "third_epochs": args.third_epochs,
        "retrain": args.retrain,
        "precision": args.precision,
        "force_gpu_paths": args.force_gpu_paths,
        "seed": args.seed,
        "keras_verbose": 2,  # one line per epoch keeps the executed copies small
    }


def failed_folder(output_dir):
    """Where papermill writes a notebook while it runs, and where the copy stays when the run
    fails or is interrupted: never ``executed/``, whose copies are the record of the last
    successful run (committed for the CIFAR-100 run). ``runs/failed`` for the repository
    (git ignores ``runs/``), ``<output_dir>/failed`` for any other output folder."""
    output_dir = os.path.abspath(output_dir)
    if output_dir == os.path.abspath(REPO_ROOT):
        return os.path.join(output_dir, "runs", "failed")
    return os.path.join(output_dir, "failed")


def run_notebooks(args):
    import papermill

    from .artifacts import replace_with_copy

    parameters = notebook_parameters(args)
    os.environ.update(kernel_environment())  # for the kernels papermill starts
    executed_dir = os.path.join(parameters["output_dir"], "executed")
    unfinished_dir = failed_folder(parameters["output_dir"])
    os.makedirs(executed_dir, exist_ok=True)
    os.makedirs(unfinished_dir, exist_ok=True)
    timings = []
    for name in args.notebooks:
        source = os.path.join(REPO_ROOT, name)
        if not os.path.exists(source):
            print(f"Skipping {name}: not present in {REPO_ROOT}.")
            continue
        print(f"\n=== {name} ===", flush=True)
        started = time.time()
        running = os.path.join(unfinished_dir, name)
        final = os.path.join(executed_dir, name)
        kept = f"{final} was left as it was." if os.path.exists(final) else ""
        try:
            papermill.execute_notebook(source, running,
                                       parameters=notebook_arguments(source, parameters),
                                       cwd=parameters["output_dir"],
                                       extra_arguments=KERNEL_ARGUMENTS,
                                       kernel_name="python3", progress_bar=True)
        except papermill.PapermillExecutionError as error:
            print(f"\n{name} failed in cell {error.exec_count}: {error.ename}: {error.evalue}\n"
                  f"The failed copy with the full traceback: {running}\n{kept}",
                  file=sys.stderr)
            return 1
        except BaseException:  # interrupted (Ctrl-C), kernel died, papermill's own errors
            print(f"\n{name} did not finish; its partial copy: {running}\n{kept}", file=sys.stderr)
            raise
        # Only a notebook that ran to the end replaces the previous executed copy, atomically.
        replace_with_copy(running, final)
        os.remove(running)
        timings.append((name, time.time() - started))
    for name, seconds in timings:
        print(f"{name}: {seconds:.0f} s")
    print(f"Artifacts in {parameters['output_dir']} (models/, arrays/, figures/, executed/).")
    return 0


# CLI runs only (an interactive user keeps every message): the executed copies should hold
# the notebooks' own output. TensorFlow's C++ start-up log is written to file descriptor 2
# before any log level applies; with the kernel's fd capture off it reaches the terminal
# that runs the command instead of the notebook.
KERNEL_ARGUMENTS = ["--IPKernelApp.capture_fd_output=False"]


def kernel_environment(environ=None):
    """Environment variables for the kernels of a CLI run.

    Progress bars off (``TQDM_DISABLE``) and tqdm's "IProgress not found" warning filtered
    (``PYTHONWARNINGS``): executed copies need neither. TensorFlow's C++ INFO lines off
    (``TF_CPP_MIN_LOG_LEVEL=1``, unless set; warnings and errors stay). The package importable
    from the output folder, where the kernels run (``PYTHONPATH``).

    Args:
        environ: the current environment (default ``os.environ``); it is not changed.
    """
    environ = os.environ if environ is None else environ
    return {
        "TQDM_DISABLE": "1",
        "PYTHONWARNINGS": _joined(",", environ.get("PYTHONWARNINGS"), "ignore:IProgress not found"),
        "TF_CPP_MIN_LOG_LEVEL": environ.get("TF_CPP_MIN_LOG_LEVEL", "1"),
        "PYTHONPATH": _joined(os.pathsep, REPO_ROOT, environ.get("PYTHONPATH")),
    }


def _joined(separator, *parts):
    return separator.join(part for part in parts if part)


def notebook_arguments(source, parameters):
    """What a run passes to the notebook ``source``: the ones of ``parameters`` that its
    parameters cell declares, as its kernel sees them (``kernel_parameters``).
    tests/test_parameters.py checks that each notebook uses all it declares."""
    import papermill

    declared = papermill.inspect_notebook(source)
    return {key: value for key, value in kernel_parameters(parameters).items() if key in declared}


def kernel_parameters(parameters):
    """The parameters as the kernel sees them: it runs in the output folder, so
    ``output_dir`` is "." and every path a notebook prints is relative to that folder."""
    return {**parameters, "output_dir": "."}


def predict_images(args):
    from . import predict
    from .artifacts import model_path
    from .data import label_names

    path = args.model_file or model_path(args.model, args.models_dir)
    names = label_names(args.labels)[0]
    return predict.run(args.images, path, names, k=args.top, verbose=args.verbose)


def main(argv=None):
    args = parse_args(argv)
    if args.command == "run":
        return run_notebooks(args)
    return predict_images(args)  # the only other command (argparse requires one)


if __name__ == "__main__":
    sys.exit(main())
