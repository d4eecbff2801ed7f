"""Your own images: read any image Pillow reads, bring it to 32x32 RGB, and list a saved
model's five most probable classes. ``python -m cifar100cnn predict IMAGE...`` uses it."""

import contextlib
import os
import sys
import tempfile

import numpy as np

IMAGE_SIDE = 32


class PredictError(RuntimeError):
    """An image or a model that cannot be used; the message is one line naming the file."""


def one_line(text):
    """``text`` with every run of whitespace (newlines included) made one space."""
    return " ".join(str(text).split())


def load_image(path, side=IMAGE_SIDE):
    """One image file as the models expect it: RGB, shorter side resized to ``side`` pixels,
    then the centre ``side`` x ``side`` square.

    A larger image is shrunk by area averaging (a box filter: each output pixel is the mean of
    the pixels it covers), so a 32x32 picture enlarged by a whole factor comes back pixel for
    pixel and gets the same answer at any size; a smaller one is enlarged with Lanczos.

    Args:
        path: any image format Pillow reads (PNG, JPEG, GIF, BMP, TIFF, WebP...). The EXIF
            orientation of photos is applied; transparency and palettes become plain RGB.
        side: the output size (32 for CIFAR).

    Returns:
        A uint8 array of shape (side, side, 3).

    Raises:
        PredictError: the file is missing or not an image Pillow can read.
    """
    from PIL import Image, ImageOps

    if not os.path.exists(path):
        raise PredictError(f"{path}: no such file")
    if os.path.isdir(path):
        raise PredictError(f"{path}: is a folder, not an image file")
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
            shrinking = min(image.size) >= side
            method = Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS
            fitted = ImageOps.fit(image, (side, side), method=method)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise PredictError(f"{path}: not an image Pillow can read ({one_line(error)})") from None
    return np.asarray(fitted, dtype=np.uint8)


def load_images(paths, side=IMAGE_SIDE):
    """``(images, errors)``: the readable images as ``{path: array}`` and a one-line
    message for each file that is not."""
    images, errors = {}, []
    for path in paths:
        try:
            images[path] = load_image(path, side)
        except PredictError as error:
            errors.append(str(error))
    return images, errors


def image_files(spec):
    """The files named by ``spec``: a folder (its files, sorted), one path or a list of paths."""
    if isinstance(spec, (str, os.PathLike)):
        if os.path.isdir(spec):
            return sorted(os.path.join(spec, name) for name in os.listdir(spec)
                          if os.path.isfile(os.path.join(spec, name)) and not name.startswith("."))
        return [os.fspath(spec)]
    return [os.fspath(path) for path in spec]


def write_examples(images, folder, labels=None, scale=4):
    """Save images as PNG files, enlarged ``scale`` times (so that reading them back goes
    through the resizing), named ``example_<i>[_<label>].png``; returns the paths."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        suffix = f"_{labels[i]}" if labels is not None else ""
        path = os.path.join(folder, f"example_{i}{suffix}.png")
        side = image.shape[0] * scale
        Image.fromarray(np.asarray(image, np.uint8)).resize((side, side), Image.Resampling.NEAREST).save(path)
        paths.append(path)
    return paths


def load_predictor(path):
    """The saved model at ``path`` (safe mode on, shapes checked).

    Raises:
        PredictError: the file is missing, broken or not a CIFAR-100 model.
    """
    from . import artifacts

    try:
        return artifacts.load_model(path)
    except artifacts.ArtifactError as error:
        message = one_line(error)
        raise PredictError(message if os.fspath(path) in message else f"{path}: {message}") from None
    except Exception as error:  # whatever else Keras raises on a damaged file
        raise PredictError(f"{path}: not a loadable Keras model ({type(error).__name__}: "
                           f"{one_line(error)[:300]})") from None


def top_classes(model, images, names, k=5):
    """For each image (uint8, (N, 32, 32, 3)), the ``k`` most probable ``(name, probability)``."""
    from .evaluation import top_k_labels
    from .inference import predict_raw

    proba = predict_raw(model, np.asarray(images), description=None)  # one line per image, no bar
    return [top_k_labels(row, names, k) for row in proba]


def format_prediction(path, top):
    """The file name, then one indented line per class: rank, name, probability."""
    return "\n".join([path] + [f"  {rank}. {name:<22} {p:6.1%}"
                               for rank, (name, p) in enumerate(top, start=1)])


@contextlib.contextmanager
def native_stderr_hidden(hide=True):
    """Send what is written to the process's stderr (file descriptor 2: TensorFlow's C++
    start-up log) to a scratch file inside the block; no-op when ``hide`` is False."""
    if not hide:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as scratch:
        os.dup2(scratch.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def run(paths, model_path, names, k=5, verbose=False, out=None, err=None):
    """The ``predict`` command: print the top-``k`` classes of every readable image.

    Args:
        paths: image files.
        model_path: the saved ``.keras`` model.
        names: the class names, in class order.
        k: classes listed per image.
        verbose: show TensorFlow's start-up log (hidden by default).
        out, err: where results and one-line errors go (default: stdout, stderr).

    Returns:
        The exit status: 0 when every image was classified, 1 otherwise.
    """
    out, err = out or sys.stdout, err or sys.stderr
    images, errors = load_images(paths)
    for message in errors:
        print(f"error: {message}", file=err)
    if not images:
        return 1
    try:
        with native_stderr_hidden(not verbose):
            model = load_predictor(model_path)
            tops = top_classes(model, np.stack(list(images.values())), names, k)
    except PredictError as error:
        print(f"error: {error}", file=err)
        return 1
    print(f"model: {model_path}", file=out)
    for path, top in zip(images, tops):
        print(format_prediction(path, top), file=out)
    return 1 if errors else 0
