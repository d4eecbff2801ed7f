"""Robustness to common corruptions, in the manner of CIFAR-100-C (Hendrycks & Dietterich,
"Benchmarking Neural Network Robustness to Common Corruptions and Perturbations", ICLR 2019).

Seven of their corruptions are made here in code (NumPy, SciPy, Matplotlib's colour maths and
Pillow), at their five CIFAR severities, on a fixed, seeded subset of the test images. A user
who has the official CIFAR-100-C files can read them instead (``load_cifar_c``).
"""

import io
import os
from dataclasses import dataclass

import numpy as np

# The CIFAR parameters of the benchmark's code (make_cifar_c.py), severity 1 to 5.
SEVERITY_PARAMETERS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),         # noise std, fraction of full scale
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),               # sigma in pixels
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),  # disk radius, anti-alias sigma
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),                  # factor on the distance to the image mean
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),                # added to the HSV value channel
    "jpeg_compression": (80, 65, 58, 50, 40),                 # JPEG quality
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),                # downscale factor before upscaling back
}
CORRUPTIONS = tuple(SEVERITY_PARAMETERS)
SEVERITIES = (1, 2, 3, 4, 5)
CIFAR_C_PER_SEVERITY = 10_000


# ---------------------------------------------------------------------------
# The corruptions (float images in [0, 1] in, float images out, except the Pillow ones)
# ---------------------------------------------------------------------------

def _gaussian_noise(x, std, rng):
    return x + rng.normal(scale=std, size=x.shape)


def _gaussian_blur(x, sigma, rng):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma=(0, sigma, sigma, 0), mode="nearest")


def disk_kernel(radius, alias_sigma):
    """The benchmark's defocus kernel: a disk of ``radius`` pixels, normalised, then smoothed
    by a 3x3 Gaussian of ``alias_sigma`` (anti-aliasing); all-zero borders are trimmed."""
    from scipy.ndimage import correlate

    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    taps = np.exp(-np.arange(-1, 2) ** 2 / (2 * alias_sigma ** 2))
    taps /= taps.sum()
    kernel = correlate(disk, np.outer(taps, taps), mode="mirror")
    used = np.flatnonzero(kernel.sum(axis=0) > 1e-12)
    reach = int(max(8 - used.min(), used.max() - 8))
    return kernel[8 - reach:9 + reach, 8 - reach:9 + reach]


def _defocus_blur(x, parameters, rng):
    from scipy.ndimage import correlate

    kernel = disk_kernel(*parameters)
    return correlate(x, kernel[None, :, :, None], mode="mirror")


def _contrast(x, factor, rng):
    means = x.mean(axis=(1, 2), keepdims=True)
    return (x - means) * factor + means


def _brightness(x, shift, rng):
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    hsv = rgb_to_hsv(np.clip(x, 0, 1))
    hsv[..., 2] = np.clip(hsv[..., 2] + shift, 0, 1)
    return hsv_to_rgb(hsv)


def _jpeg(image, quality):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _pixelate(image, factor):
    from PIL import Image

    side = image.shape[0]
    small = Image.fromarray(image).resize((int(side * factor),) * 2, Image.Resampling.BOX)
    return np.asarray(small.resize((side, side), Image.Resampling.BOX))


_FLOAT_CORRUPTIONS = {"gaussian_noise": _gaussian_noise, "gaussian_blur": _gaussian_blur,
                      "defocus_blur": _defocus_blur, "contrast": _contrast,
                      "brightness": _brightness}
_PILLOW_CORRUPTIONS = {"jpeg_compression": _jpeg, "pixelate": _pixelate}


def corrupt(images, corruption, severity, seed=0):
    """One corruption of the benchmark at one severity.

    Args:
        images: uint8 array of shape (N, 32, 32, 3).
        corruption: one of ``CORRUPTIONS``.
        severity: 1 (mildest) to 5.
        seed: seeds the random corruptions (Gaussian noise); the same seed, corruption and
            severity always give the same images.

    Returns:
        The corrupted images, uint8, same shape.
    """
    if corruption not in SEVERITY_PARAMETERS:
        raise ValueError(f"unknown corruption {corruption!r}; expected one of {CORRUPTIONS}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 of shape (N, H, W, 3), got {images.dtype} {images.shape}")
    parameter = SEVERITY_PARAMETERS[corruption][severity - 1]
    if corruption in _PILLOW_CORRUPTIONS:
        return np.stack([_PILLOW_CORRUPTIONS[corruption](image, parameter) for image in images])
    rng = np.random.default_rng([seed, CORRUPTIONS.index(corruption), severity])
    out = _FLOAT_CORRUPTIONS[corruption](images.astype(np.float64) / 255, parameter, rng)
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


# ---------------------------------------------------------------------------
# The image sets: made here, or read from CIFAR-100-C
# ---------------------------------------------------------------------------

def fixed_subset(count, size, seed=0):
    """Sorted indices of ``size`` of ``count`` items, the same for the same seed (all when
    ``size`` is None or at least ``count``)."""
    if size is None or size >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size, replace=False))


def corrupted_sets(x, y, corruptions=CORRUPTIONS, severities=SEVERITIES, seed=0):
    """Every corruption at every severity of the images ``x`` (labels ``y``).

    Returns:
        ``{(corruption, severity): (images, labels)}``.
    """
    return {(name, severity): (corrupt(x, name, severity, seed), np.asarray(y))
            for name in corruptions for severity in severities}


def load_cifar_c(folder, indices=None, corruptions=None):
    """Read CIFAR-100-C (or CIFAR-10-C) from its official layout: ``<corruption>.npy``
    with 5 x 10,000 images (severities 1 to 5 one after the other) and ``labels.npy``.

    Args:
        folder: the folder holding the ``.npy`` files.
        indices: which of the 10,000 test images to take at each severity (default: all).
        corruptions: names to read (default: every ``.npy`` file but ``labels.npy``).

    Returns:
        ``{(corruption, severity): (images, labels)}`` like ``corrupted_sets``.
    """
    labels_path = os.path.join(folder, "labels.npy")
    if not os.path.isfile(labels_path):
        raise FileNotFoundError(f"{labels_path} not found: not a CIFAR-100-C folder")
    labels = np.load(labels_path, mmap_mode="r", allow_pickle=False)
    per_severity = len(labels) // len(SEVERITIES)
    if corruptions is None:
        corruptions = sorted(name[:-4] for name in os.listdir(folder)
                             if name.endswith(".npy") and name != "labels.npy")
    indices = np.arange(per_severity) if indices is None else np.asarray(indices)
    sets = {}
    for name in corruptions:
        images = np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r", allow_pickle=False)
        if images.shape[0] != len(labels) or images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
            raise ValueError(f"{name}.npy holds {images.dtype} {images.shape}; expected uint8 "
                             f"({len(labels)}, 32, 32, 3) to match labels.npy")
        for severity in SEVERITIES:
            rows = (severity - 1) * per_severity + indices
            sets[(name, severity)] = (np.asarray(images[rows]), np.asarray(labels[rows], np.int64))
    return sets


# ---------------------------------------------------------------------------
# Accuracy under corruption
# ---------------------------------------------------------------------------

@dataclass
class Robustness:
    """A model's accuracy on clean images and on each corruption at each severity.

    ``accuracy[i, s - 1]`` is the accuracy on ``corruptions[i]`` at severity ``s``.
    """

    model: str
    clean: float
    corruptions: tuple
    accuracy: np.ndarray
    n_images: int

    @property
    def mean_corruption_accuracy(self):
        """The mean over every corruption and severity."""
        return float(self.accuracy.mean())

    @property
    def drop(self):
        """Clean accuracy minus the mean corruption accuracy."""
        return self.clean - self.mean_corruption_accuracy

    def headline(self, digits=4):
        """The figures a screen compares: the mean under corruption, Gaussian noise at its
        mildest severity and each corruption's mean over the severities, rounded."""
        noise = self.accuracy[self.corruptions.index("gaussian_noise"), 0]
        return dict(mean_corruption=round(self.mean_corruption_accuracy, digits),
                    noise_s1=round(float(noise), digits),
                    per_corruption={name: round(float(row.mean()), digits)
                                    for name, row in zip(self.corruptions, self.accuracy)})

    def rows(self):
        """One row per corruption and severity, for a CSV file."""
        return [{"model": self.model, "corruption": name, "severity": severity,
                 "accuracy": float(self.accuracy[i, severity - 1]), "n_images": self.n_images}
                for i, name in enumerate(self.corruptions) for severity in SEVERITIES]


def evaluate_robustness(model, x_clean, y_clean, sets, name=None, batch_size=500, clean_proba=None,
                        precision="float32"):
    """Accuracy of ``model`` on the clean images and on every set of ``sets``.

    Args:
        model: a Keras model from raw 0-255 images to class probabilities.
        x_clean, y_clean: the clean images (uint8) and labels the sets were made from.
        sets: ``{(corruption, severity): (images, labels)}`` from ``corrupted_sets`` or
            ``load_cifar_c``.
        name: the model's name in the table (default: ``model.name``).
        batch_size: images per prediction batch.
        clean_proba: the model's probabilities for ``x_clean`` when already predicted (for
            instance the test-set ones, indexed by the subset): reused, not predicted again.
        precision: "float32" (default) or "bfloat16" for the corrupted sets; every image
            whose right-or-wrong the bfloat16 rounding could change is predicted again in
            float32 (``inference.predict_in_batches``), so the accuracies are float32's.

    Returns:
        A ``Robustness``.
    """
    from .inference import predict_in_batches

    name = name or model.name
    clean = clean_proba if clean_proba is not None else predict_in_batches(
        model, x_clean, batch_size, f"{name} clean")
    corruptions = tuple(dict.fromkeys(corruption for corruption, _ in sets))
    accuracy = np.full((len(corruptions), len(SEVERITIES)), np.nan)
    for i, corruption in enumerate(corruptions):
        parts = [sets[(corruption, s)] for s in SEVERITIES]
        labels = np.concatenate([labels for _, labels in parts])
        proba = predict_in_batches(model, np.concatenate([images for images, _ in parts]),
                                   batch_size, f"{name} {corruption}", precision=precision,
                                   labels=labels, ranks=(1,))
        hits = proba.argmax(axis=1) == labels
        accuracy[i] = [chunk.mean() for chunk in np.split(hits, len(SEVERITIES))]
    return Robustness(name, float(np.mean(clean.argmax(axis=1) == y_clean)), corruptions,
                      accuracy, len(x_clean))


def format_robustness(result):
    """A text table: one line per corruption (severities 1-5 and their mean), then the
    clean accuracy, the mean corruption accuracy and the drop."""
    lines = [f"{result.model}: accuracy on {result.n_images:,} images per set",
             f"{'corruption':<18}" + "".join(f"{f's{s}':>7}" for s in SEVERITIES) + f"{'mean':>8}"]
    for name, values in zip(result.corruptions, result.accuracy):
        lines.append(f"{name:<18}" + "".join(f"{v:>7.3f}" for v in values) + f"{values.mean():>8.3f}")
    lines.append(f"clean {result.clean:.3f} | mean corruption accuracy "
                 f"{result.mean_corruption_accuracy:.3f} | drop {result.drop:.3f}")
    return "\n".join(lines)


def save_robustness(results, path):
    """Every result's rows, plus one ``mean`` row and one ``clean`` row per model, as CSV."""
    from .evaluation import save_results

    rows = []
    for result in results:
        rows += result.rows()
        rows.append({"model": result.model, "corruption": "mean", "severity": "",
                     "accuracy": result.mean_corruption_accuracy, "n_images": result.n_images})
        rows.append({"model": result.model, "corruption": "clean", "severity": "",
                     "accuracy": result.clean, "n_images": result.n_images})
    return save_results(rows, path, columns=("model", "corruption", "severity", "accuracy", "n_images"))
