"""``python -m cifar100cnn run``: execute the four notebooks in order with papermill.
``python -m cifar100cnn predict IMAGE...``: the top-5 classes of your own images."""

import argparse
import os
import sys

from . import environment, runner
from .recipes import SHIPPED_THIRD_PRESET, THIRD_PRESETS
from .runner import (KERNEL_ARGUMENTS, NOTEBOOKS, REPO_ROOT, failed_folder,  # noqa: F401 (the CLI's API)
                     kernel_environment, kernel_parameters, notebook_arguments)


def notebook_name(value):
    """A notebook of ``runner.NOTEBOOKS``, given with or without ".ipynb"; anything else is an
    error that lists the valid names (argparse exits with status 2)."""
    name = value if value.endswith(".ipynb") else value + ".ipynb"
    if name not in runner.NOTEBOOKS:
        raise argparse.ArgumentTypeError(
            f"unknown notebook {value!r}; choose from {', '.join(runner.NOTEBOOKS)}")
    return name


def whole_number(low, high=None):
    """An argparse type: an integer from ``low`` (to ``high``), else an error saying the range."""
    def convert(value):
        try:
            number = int(value)
        except ValueError:
            number = None
        if number is None or number < low or (high is not None and number > high):
            allowed = f"from {low} to {high}" if high is not None else f"{low} or more"
            raise argparse.ArgumentTypeError(f"expected a whole number {allowed}, got {value!r}")
        return number
    return convert


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cifar100cnn",
                                     description="CIFAR-100 CNN pipeline (four notebooks).")
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser(
        "run", help="execute the four notebooks in order",
        description="Execute the notebooks in order with papermill. A CIFAR-100 run writes "
                    "under runs/cifar100/ and starts from copies of the committed models; "
                    "the repository's files are written only with --record.")
    add_run_options(run_parser)
    add_predict_parser(commands)
    return parser.parse_args(argv)


def add_run_options(run_parser):
    option = run_parser.add_argument
    option("--quick", action="store_true",
           help="tiny synthetic data and 1 epoch per model: a smoke test of the whole pipeline "
                "(written under runs/quick/)")
    option("--data", choices=("cifar100", "synthetic"), default="cifar100",
           help="data source (default: cifar100; synthetic: full-size made-up data, written "
                "under runs/synthetic/)")
    option("--out", default=None,
           help="folder for models/, arrays/, figures/ and executed/ (default: runs/cifar100, "
                "runs/quick or runs/synthetic; a CIFAR-100 run starts from copies of the "
                "committed models)")
    option("--record", action="store_true",
           help="maintainers: write the committed record in the repository itself (models/, "
                "arrays/, figures/, executed/); CIFAR-100 only")
    option("--archive", default=None,
           help="local cifar-100-python.tar.gz (default: $CIFAR100_ARCHIVE, else download)")
    option("--no-verify", action="store_true",
           help="skip the sha256 check of a local archive ($CIFAR100_VERIFY=0 does the same)")
    option("--vgg16-weights", default="imagenet",
           help="'imagenet' (download), a local .h5 file ($VGG16_WEIGHTS), or 'none' (random)")
    option("--vgg16-finetune", action="store_true",
           help="after the head, unfreeze VGG16 block 5 and train at a low rate (GPU advised)")
    # The range of transfer.VGG16_INPUT_SIZES (not imported here: that loads Keras).
    option("--vgg16-input-size", type=whole_number(32, 224), default=None,
           help="upscale images to this size for VGG16 (32-224; default: the recipe's 32, "
                "as the original)")
    option("--third-preset", choices=THIRD_PRESETS, default=SHIPPED_THIRD_PRESET,
           help="the recipe saved as the third model: robust (ours, default: tuned and made "
                "robust to noise, blur and contrast), tuned (ours, fragile to noise) or "
                "original (the original project's); a preset other than the saved model's "
                "needs --retrain")
    option("--third-epochs", type=whole_number(1), default=None,
           help="epochs of the third model (default: its preset's, 16 for robust and tuned); takes "
                "effect when the model is trained (--retrain, or no saved model)")
    option("--precision", default="auto",
           choices=("auto", "float32", "mixed_float16", "mixed_bfloat16"),
           help="training precision (default auto: mixed_float16 on a GPU, mixed_bfloat16 "
                "on CPUs with AMX or AVX512-BF16, else float32); saved models are float32")
    option("--force-gpu-paths", action="store_true",
           help="train with every GPU-only path at once, also on a CPU: mixed_float16 "
                "with loss scaling, XLA, augmentation inside the model, "
                "MirroredStrategy (over 2 logical devices on a CPU); a check that they "
                "work together (with --quick: minutes)")
    option("--retrain", action="store_true",
           help="train every model again even if it exists in the output folder")
    option("--seed", type=int, default=0,
           help="random seed of data order, augmentation and initial weights (default: 0)")
    option("--notebooks", nargs="+", type=notebook_name, default=list(NOTEBOOKS),
           metavar="NAME", help=f"which notebooks to run, in order (default: all four: "
                                f"{' '.join(NOTEBOOKS)}; the .ipynb may be left out)")


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
    predict.add_argument("--top", type=whole_number(1, 100), default=5, help="classes listed per image (default: 5)")
    predict.add_argument("--verbose", action="store_true",
                         help="show TensorFlow's start-up log (hidden by default)")


def output_folder(args):
    """Where a run writes (``runner.output_folder``)."""
    return runner.output_folder(args.data, args.quick, args.out, args.record)


def notebook_parameters(args, environ=None):
    """The papermill parameters of a run: the options, completed by the environment variables
    (``environment.archive_settings``, ``environment.vgg16_weights``); each notebook is given
    those it declares (``runner.notebook_arguments``).

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


def shown(path):
    """``path`` as the user would type it: relative to the current folder when inside it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def run(args):
    """The ``run`` command: start from the committed models (a CIFAR-100 run), then execute the
    notebooks (``runner.run_notebooks``)."""
    parameters = notebook_parameters(args)
    output_dir = parameters["output_dir"]
    where = shown(output_dir)
    if args.data == "cifar100" and not args.quick:
        copies = runner.seed_models(os.path.join(output_dir, "models"))
        if copies and not args.retrain:
            print(f"Reusing the committed models ({', '.join(copies)}), copied to "
                  f"{os.path.join(where, 'models')}; --retrain trains them again there.")
    if parameters["archive"] and not args.quick and args.data == "cifar100":
        check = "checked against the official sha256" if parameters["verify_archive"] else "sha256 check off"
        print(f"CIFAR-100 from {shown(parameters['archive'])} ({check}).")
    print(f"Writing to {where}/ (executed/, figures/, models/, arrays/).", flush=True)
    status = runner.run_notebooks(args.notebooks, parameters, output_dir)
    if status == 0:
        print(f"Executed notebooks in {os.path.join(where, 'executed')}/, figures in "
              f"{os.path.join(where, 'figures')}/, results in {os.path.join(where, 'models')}/.")
    return status


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
        if args.record and (args.quick or args.data != "cifar100" or args.out):
            print("--record writes the committed CIFAR-100 record in the repository: it takes "
                  "neither --quick, --data synthetic nor --out.", file=sys.stderr)
            return 2
        return run(args)
    return predict_images(args)  # the only other command (argparse requires one)


if __name__ == "__main__":
    sys.exit(main())
