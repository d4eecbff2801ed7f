"""CIFAR-100 loading (online and offline), the original hold-out split, a synthetic
CIFAR-shaped dataset and the checks of image and label arrays (the input pipelines are in
``inputs``). Images stay uint8 everywhere; models rescale them themselves.
"""

import hashlib
import io
import os
import pickle
import tarfile
import warnings
from dataclasses import dataclass

import numpy as np

CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
CIFAR100_SHA256 = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"
ARCHIVE_MEMBERS = ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta")
IMAGE_SHAPE = (32, 32, 3)
NUM_CLASSES = 100
NUM_SUPERCLASSES = 20
SOURCES = ("cifar100", "synthetic")

FINE_LABEL_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch "
    "crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo "
    "keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse "
    "mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy "
    "porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper "
    "snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television "
    "tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()
COARSE_LABEL_NAMES = (
    "aquatic_mammals fish flowers food_containers fruit_and_vegetables "
    "household_electrical_devices household_furniture insects large_carnivores "
    "large_man-made_outdoor_things large_natural_outdoor_scenes large_omnivores_and_herbivores "
    "medium_mammals non-insect_invertebrates people reptiles small_mammals trees vehicles_1 vehicles_2"
).split()
# Superclass of each fine class, as in the official archive.
FINE_TO_COARSE = np.array([
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
])

MANUAL_DOWNLOAD_HELP = (
    "Download {url} by hand (about 161 MB) on a machine with internet access, copy it here, "
    "then either pass its path as `archive=` (notebook parameter `archive`, CLI `--archive`) "
    "or set the environment variable CIFAR100_ARCHIVE=/path/to/cifar-100-python.tar.gz, "
    "which the notebooks and the CLIs read."
).format(url=CIFAR100_URL)


class DatasetError(RuntimeError):
    """The dataset cannot be obtained or is not a valid CIFAR-100 archive."""


@dataclass
class Dataset:
    """Train/validation/test arrays (uint8 images, int64 fine labels) and label metadata."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    fine_names: list
    coarse_names: list
    fine_to_coarse: np.ndarray
    source: str

    def describe(self):
        return (f"{self.source}: train {len(self.x_train):,}, validation {len(self.x_val):,}, "
                f"test {len(self.x_test):,} images of shape {self.x_train.shape[1:]} ({self.x_train.dtype})")


# ---------------------------------------------------------------------------
# Real CIFAR-100
# ---------------------------------------------------------------------------

def load_cifar100(archive=None, verify=True, label_mode="fine"):
    """Return ``(x_train, y_train), (x_test, y_test)``: uint8 (N, 32, 32, 3) and int64 (N,).

    ``archive`` names a local copy of the official ``cifar-100-python.tar.gz``; without one,
    Keras downloads the dataset. (The notebooks and CLIs take it from ``CIFAR100_ARCHIVE``
    too: ``environment.archive_settings``.)
    ``verify=False`` skips the sha256 check of a local archive. ``label_mode`` is
    ``"fine"`` (100 classes) or ``"coarse"`` (20 superclasses).
    """
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    if not archive:
        return _load_with_keras(label_mode)
    arrays = read_archive(archive, verify=verify)
    key = f"{label_mode}_labels"
    return ((arrays["x_train"], arrays[f"train_{key}"]),
            (arrays["x_test"], arrays[f"test_{key}"]))


def _load_with_keras(label_mode):
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar100.load_data(label_mode=label_mode)
    except Exception as error:  # Keras wraps URL/HTTP errors in a bare Exception
        raise DatasetError(
            f"Could not download CIFAR-100 ({type(error).__name__}: {error}).\n"
            + MANUAL_DOWNLOAD_HELP) from None
    return ((x_train, y_train.reshape(-1).astype(np.int64)),
            (x_test, y_test.reshape(-1).astype(np.int64)))


def sha256_of(path, chunk_size=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_archive(path, verify=True):
    """Decode a ``cifar-100-python.tar.gz`` in memory; nothing is extracted to disk.

    Returns a dict with ``x_train``, ``x_test`` and fine/coarse label arrays for each split.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DatasetError(f"CIFAR-100 archive not found: {path!r}.\n" + MANUAL_DOWNLOAD_HELP)
    if verify:
        actual = sha256_of(path)
        if actual != CIFAR100_SHA256:
            raise DatasetError(
                f"{path} has sha256 {actual}, but the official cifar-100-python.tar.gz has "
                f"{CIFAR100_SHA256}. The file is damaged or not the official archive: download "
                "it again. If you trust this copy, load it with verify=False (notebook "
                "parameter verify_archive=False, CLI --no-verify, or the environment variable "
                "CIFAR100_VERIFY=0 for both).")
    else:
        warnings.warn(f"sha256 check of {path} skipped (verify=False).", stacklevel=3)
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = _checked_members(tar, path)
            payloads = {name: tar.extractfile(members[name]).read() for name in ARCHIVE_MEMBERS}
    except (tarfile.TarError, EOFError, OSError, ValueError) as error:
        raise DatasetError(f"{path} is not a readable tar.gz archive ({error}); it may be "
                           "truncated. Download it again.\n" + MANUAL_DOWNLOAD_HELP) from None
    arrays = {}
    for split in ("train", "test"):
        batch = _unpickle(payloads[f"cifar-100-python/{split}"], path)
        images, fine, coarse = _decode_batch(batch, split, path)
        arrays[f"x_{split}"] = images
        arrays[f"{split}_fine_labels"] = fine
        arrays[f"{split}_coarse_labels"] = coarse
    return arrays


def _checked_members(tar, path):
    """Refuse anything but plain files and folders under ``cifar-100-python/``."""
    members = {}
    for member in tar.getmembers():
        name = member.name
        if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
            raise DatasetError(f"{path} contains an unsafe member path {name!r}; refusing it.")
        if not (member.isfile() or member.isdir()):
            raise DatasetError(f"{path} contains {name!r}, which is not a plain file; refusing it.")
        members[name] = member
    missing = [name for name in ARCHIVE_MEMBERS if name not in members]
    if missing:
        raise DatasetError(f"{path} is not a CIFAR-100 python archive: missing {missing}.")
    return members


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that can build numpy arrays and nothing else executable."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _unpickle(payload, path):
    try:
        return _CifarUnpickler(io.BytesIO(payload), encoding="bytes").load()
    except Exception as error:
        raise DatasetError(f"{path}: a member could not be unpickled as CIFAR data ({error}).") from None


def _decode_batch(batch, split, path):
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        fine = np.asarray(batch[b"fine_labels"], dtype=np.int64)
        coarse = np.asarray(batch[b"coarse_labels"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as error:
        raise DatasetError(f"{path}: the {split} batch lacks CIFAR-100 fields ({error}).") from None
    n = len(fine)
    if data.ndim != 2 or data.shape != (n, 3072) or coarse.shape != (n,):
        raise DatasetError(f"{path}: the {split} batch has data of shape {data.shape} for {n} "
                           "labels; expected (N, 3072) uint8 rows, one per label.")
    if n == 0 or fine.min() < 0 or fine.max() >= NUM_CLASSES or coarse.min() < 0 \
            or coarse.max() >= NUM_SUPERCLASSES:
        raise DatasetError(f"{path}: the {split} labels are empty or outside 0-99 / 0-19.")
    # Rows are channel-major (1024 red, 1024 green, 1024 blue).
    images = data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    return images, fine, coarse


# ---------------------------------------------------------------------------
# The original hold-out split
# ---------------------------------------------------------------------------

def split_train_val(x, y, val_fraction=0.2):
    """First 80% train, last 20% validate, no shuffling (50,000 -> 40,000 / 10,000)."""
    check_images(x, "x")
    check_labels(y, len(x), "y")
    n_val = int(round(len(x) * val_fraction))
    if not 0 < n_val < len(x):
        raise ValueError(f"val_fraction={val_fraction} leaves no train or no validation images "
                         f"out of {len(x)}; expected 0 < val_fraction < 1 and more images.")
    cut = len(x) - n_val
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def class_count_range(y, num_classes=NUM_CLASSES):
    counts = np.bincount(y, minlength=num_classes)
    return int(counts.min()), int(counts.max())


# ---------------------------------------------------------------------------
# Synthetic CIFAR-shaped data
# ---------------------------------------------------------------------------

SYNTHETIC_FINE_NAMES = [f"syn{c:02d}_{f}" for c in range(NUM_SUPERCLASSES) for f in range(5)]
SYNTHETIC_COARSE_NAMES = [f"syn_group{c:02d}" for c in range(NUM_SUPERCLASSES)]
SYNTHETIC_FINE_TO_COARSE = np.arange(NUM_CLASSES) // 5
_PATCH_SIZES = (16, 20, 24)


def _smooth_noise(rng, count, size, cells):
    """Random colour fields, smooth at the scale of ``size / cells`` pixels."""
    coarse = rng.uniform(-1.0, 1.0, (count, cells, cells, 3)).astype(np.float32)
    reps = -(-size // cells)
    return np.repeat(np.repeat(coarse, reps, axis=1), reps, axis=2)[:, :size, :size]


def _class_templates(rng):
    """A 20x20 pattern per fine class: its superclass' pattern plus a class-specific part."""
    superclass = _smooth_noise(rng, NUM_SUPERCLASSES, 20, 4)
    own = _smooth_noise(rng, NUM_CLASSES, 20, 5)
    templates = 0.5 * superclass[SYNTHETIC_FINE_TO_COARSE] + 0.5 * own
    return templates / np.abs(templates).max(axis=(1, 2, 3), keepdims=True)


def _resize_nearest(patterns, size):
    index = (np.arange(size) * patterns.shape[1] / size).astype(int)
    return patterns[:, index][:, :, index]


def make_synthetic(n_train=50_000, n_test=10_000, seed=0):
    """A deterministic, learnable CIFAR-shaped dataset with 100 classes in 20 superclasses.

    Each class has a colour pattern (shared in part with its superclass) drawn at a random
    position, scale, mirror and colour jitter over a smooth random background with pixel
    noise. Returns ``(x_train, y_train), (x_test, y_test)`` like ``load_cifar100``.
    It is NOT CIFAR-100: never report results on it as such.
    """
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    rng = np.random.default_rng(seed)
    templates = _class_templates(rng)
    scaled = {size: _resize_nearest(templates, size) for size in _PATCH_SIZES}
    # Each split is class-balanced on its own, as in CIFAR-100 (500 / 100 per class).
    return _render(rng, scaled, n_train), _render(rng, scaled, n_test)


def _render(rng, scaled, count, chunk=5000):
    labels = np.tile(np.arange(NUM_CLASSES), -(-count // NUM_CLASSES))[:count]
    labels = rng.permutation(labels).astype(np.int64)
    images = np.empty((count,) + IMAGE_SHAPE, dtype=np.uint8)
    for start in range(0, count, chunk):
        part = labels[start:start + chunk]
        images[start:start + len(part)] = _render_chunk(rng, scaled, part)
    return images, labels


def _render_chunk(rng, scaled, labels):
    n = len(labels)
    canvas = 0.3 * _smooth_noise(rng, n, 32, 4)
    sizes = rng.choice(_PATCH_SIZES, size=n)
    for size in _PATCH_SIZES:
        rows = np.flatnonzero(sizes == size)
        patch = scaled[size][labels[rows]]
        flip = rng.random(len(rows)) < 0.5
        patch[flip] = patch[flip, :, ::-1]
        top = rng.integers(0, 33 - size, len(rows))
        left = rng.integers(0, 33 - size, len(rows))
        ii = top[:, None] + np.arange(size)
        jj = left[:, None] + np.arange(size)
        canvas[rows[:, None, None], ii[:, :, None], jj[:, None, :]] = patch
    gain = rng.uniform(0.8, 1.1, (n, 1, 1, 3)).astype(np.float32)
    shift = rng.uniform(-0.1, 0.1, (n, 1, 1, 3)).astype(np.float32)
    noise = rng.normal(0.0, 0.15, canvas.shape).astype(np.float32)
    pixels = 127.5 + 100.0 * (canvas * gain + shift + noise)
    return np.clip(pixels, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------
# One entry point for notebooks
# ---------------------------------------------------------------------------

def label_names(source="cifar100", quick=False):
    """The class names of the data ``load_dataset(source, quick=quick)`` returns.

    Args:
        source: "cifar100" or "synthetic" (default "cifar100").
        quick: True for quick mode's synthetic data, whatever ``source`` says (default False).

    Returns:
        ``(fine_names, coarse_names, fine_to_coarse)``: two lists and an int array.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown data source {source!r}; expected one of {SOURCES}")
    if quick or source == "synthetic":
        names = SYNTHETIC_FINE_NAMES, SYNTHETIC_COARSE_NAMES, SYNTHETIC_FINE_TO_COARSE
    else:
        names = FINE_LABEL_NAMES, COARSE_LABEL_NAMES, FINE_TO_COARSE
    return list(names[0]), list(names[1]), np.asarray(names[2])


def load_dataset(source="cifar100", archive=None, verify=True, quick=False, seed=0):
    """Load ``source`` ("cifar100" or "synthetic") and split it the original way.

    ``quick`` uses a small synthetic set (2,000 train + 500 test) whatever ``source`` says,
    so that the whole pipeline can be exercised in minutes.
    """
    names = label_names(source, quick)
    if quick:
        train, test = make_synthetic(2_000, 500, seed=seed)
        return split_dataset(train, test, *names, "synthetic (quick)")
    if source == "synthetic":
        return split_dataset(*make_synthetic(seed=seed), *names, source)
    return split_dataset(*load_cifar100(archive, verify=verify), *names, source)


def synthetic_dataset(n_train=50_000, n_test=10_000, seed=0, source="synthetic"):
    """``make_synthetic`` split the original way, with the synthetic class names."""
    train, test = make_synthetic(n_train, n_test, seed=seed)
    return split_dataset(train, test, *label_names("synthetic"), source)


def split_dataset(train, test, fine_names, coarse_names, fine_to_coarse, source):
    (x_train, y_train), (x_val, y_val) = split_train_val(*train)
    return Dataset(x_train, y_train, x_val, y_val, *test, list(fine_names), list(coarse_names),
                   np.asarray(fine_to_coarse), source)


# ---------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------

def check_images(x, name="images"):
    """Raise ValueError unless ``x`` is a non-empty (N, 32, 32, 3) batch of 0-255 pixels."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} must be a numpy array of shape (N, 32, 32, 3), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"{name} must have shape (N, 32, 32, 3), got {x.shape}")
    if len(x) == 0:
        raise ValueError(f"{name} is empty; expected at least one image")
    if x.dtype == np.uint8:
        return
    if x.dtype not in (np.float16, np.float32):
        raise ValueError(f"{name} must be uint8 (or float32 in 0-255), got {x.dtype}")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 255 or (high <= 1.0 and len(x) > 1):
        raise ValueError(f"{name} must hold pixel values in 0-255 (not 0-1 or standardized); "
                         f"got values from {low:.3g} to {high:.3g}")


def check_labels(y, n, name="labels", num_classes=NUM_CLASSES):
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (integer class ids), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integer class ids, got dtype {y.dtype}")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} must lie in 0..{num_classes - 1}, got {y.min()}..{y.max()}")
