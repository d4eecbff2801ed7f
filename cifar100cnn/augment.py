"""Training-time augmentation: random rotation, shifts and flips as one affine resampling
(``RandomAffine``), its presets, and where it runs (tf.data map or inside the model)."""

import keras
import numpy as np
from keras import layers

from .hardware import backend, gpu_names

# Each preset: rotation range (degrees), shift range (fraction of the side), flips, fill.
AUGMENTATIONS = {
    # The original's ImageDataGenerator: rotation 40, shifts 0.2, vertical flip, nearest fill.
    "original": dict(rotation=40.0, shift=0.2, horizontal_flip=False, vertical_flip=True,
                     fill_mode="nearest"),
    # Ours (as in the speed records): mirror and whole-pixel shifts of up to 2 pixels.
    "tuned": dict(rotation=0.0, shift=2 / 32, horizontal_flip=True, vertical_flip=False,
                  fill_mode="reflect", whole_pixels=True),
    # The ResNet-9 recipe's: mirror and shifts of up to 4 pixels (bilinear).
    "resnet9": dict(rotation=0.0, shift=0.125, horizontal_flip=True, vertical_flip=False,
                    fill_mode="reflect"),
}


def affine_transforms(angles, shifts_x, shifts_y, flips_x, flips_y, height, width):
    """Per-image rows ``[a0, a1, a2, b0, b1, b2, 0, 0]`` for ``keras.ops.image.affine_transform``.

    Output pixel (x, y) reads the input at ``R(angle) F (p - centre) + centre + shift``, where
    F multiplies x and y by the flips (+1 or -1): rotation, flips and shifts in one resampling.

    Args:
        angles: rotation per image, in radians (shape (n,)).
        shifts_x: horizontal shift per image, in pixels.
        shifts_y: vertical shift per image, in pixels.
        flips_x: +1 or -1 per image (-1 mirrors left-right).
        flips_y: +1 or -1 per image (-1 mirrors top-bottom).
        height: image height in pixels.
        width: image width in pixels.

    Returns:
        A tensor of shape (n, 8).
    """
    ops = keras.ops
    cos, sin = ops.cos(angles), ops.sin(angles)
    a0, a1 = cos * flips_x, -sin * flips_y
    b0, b1 = sin * flips_x, cos * flips_y
    cx, cy = (width - 1) / 2, (height - 1) / 2
    a2 = cx - a0 * cx - a1 * cy + shifts_x
    b2 = cy - b0 * cx - b1 * cy + shifts_y
    zeros = ops.zeros_like(angles)
    return ops.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def fill_coordinates(coords, size, fill_mode):
    """Source coordinates outside ``[0, size - 1]`` brought inside, as TensorFlow's image
    transform does.

    Args:
        coords: source coordinates along one axis (a float tensor).
        size: the image's size along that axis, in pixels.
        fill_mode: "nearest" clamps, "reflect" mirrors about the edge (d c b a | a b c d).

    Returns:
        The coordinates, all within ``[0, size - 1]``.
    """
    ops = keras.ops
    if fill_mode == "reflect":
        coords = ops.mod(coords, 2.0 * size)
        coords = ops.where(coords >= size, 2.0 * size - 1.0 - coords, coords)
    elif fill_mode != "nearest":
        raise ValueError(f"fill_mode must be 'nearest' or 'reflect', got {fill_mode!r}")
    return ops.clip(coords, 0.0, size - 1.0)


def resample_affine(images, transforms, fill_mode="nearest"):
    """``keras.ops.image.affine_transform`` (bilinear, no perspective) from gathers alone.

    TensorFlow 2.21 has no XLA kernel for its affine-transform op; this version compiles, so
    augmentation inside a model does not keep the training step from XLA on a GPU.

    Args:
        images: float images, shape (n, height, width, channels).
        transforms: rows of ``affine_transforms``, shape (n, 8).
        fill_mode: "nearest" (default) or "reflect": see ``fill_coordinates``.

    Returns:
        The resampled images, same shape as ``images``.
    """
    ops = keras.ops
    n = ops.shape(images)[0]
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    ys, xs = ops.meshgrid(ops.arange(height, dtype="float32"), ops.arange(width, dtype="float32"),
                          indexing="ij")
    # reshape, not [:, i, None, None]: TensorFlow's graph mode without XLA drops those axes.
    a0, a1, a2, b0, b1, b2 = (ops.reshape(transforms[:, i], (-1, 1, 1)) for i in range(6))
    src_x = fill_coordinates(a0 * xs + a1 * ys + a2, width, fill_mode)
    src_y = fill_coordinates(b0 * xs + b1 * ys + b2, height, fill_mode)
    x0, y0 = ops.floor(src_x), ops.floor(src_y)
    wx, wy = ops.reshape(src_x - x0, (-1, 1)), ops.reshape(src_y - y0, (-1, 1))
    x0, y0 = ops.cast(x0, "int32"), ops.cast(y0, "int32")
    # At the last row/column the far neighbour has weight 0: clamping it is harmless.
    x1, y1 = ops.minimum(x0 + 1, width - 1), ops.minimum(y0 + 1, height - 1)
    pixels = ops.reshape(images, (-1, channels))
    first = ops.reshape(ops.arange(n, dtype="int32") * (height * width), (-1, 1, 1))

    def gather(y, x):
        return ops.take(pixels, ops.reshape(first + y * width + x, (-1,)), axis=0)

    top = gather(y0, x0) * (1 - wx) + gather(y0, x1) * wx
    bottom = gather(y1, x0) * (1 - wx) + gather(y1, x1) * wx
    return ops.reshape(top * (1 - wy) + bottom * wy, (n, height, width, channels))


@keras.saving.register_keras_serializable(package="cifar100cnn")
class RandomAffine(layers.Layer):
    """Random rotation, shifts and flips composed into ONE affine transform per image.

    Three separate Keras layers (RandomRotation, RandomTranslation, RandomFlip) resample each
    image three times; this resamples it once (bilinear), about twice as fast in tf.data.
    ``xla=True`` resamples with gathers (``resample_affine``) so that XLA can compile it,
    inside a model on a GPU; in tf.data on a CPU TensorFlow's own kernel is about 1.5x faster.
    Ranges follow ImageDataGenerator: angle ~ U(-rotation, rotation) degrees, shift ~
    U(-shift, shift) x side, each flip with probability 1/2.
    """

    def __init__(self, rotation=0.0, shift=0.0, horizontal_flip=False, vertical_flip=False,
                 fill_mode="nearest", seed=None, xla=False, whole_pixels=False, **kwargs):
        super().__init__(**kwargs)
        self.rotation, self.shift = float(rotation), float(shift)
        # Whole-pixel shifts (without rotation) move pixels exactly: no bilinear blur.
        self.whole_pixels = bool(whole_pixels)
        self.horizontal_flip, self.vertical_flip = bool(horizontal_flip), bool(vertical_flip)
        self.fill_mode, self.seed, self.xla = fill_mode, seed, bool(xla)
        self.seed_generator = keras.random.SeedGenerator(seed)
        # TensorFlow 2.21 has no XLA kernel for its affine transform.
        self.supports_jit = self.xla

    def _uniform(self, n, limit):
        return keras.random.uniform((n,), -limit, limit, seed=self.seed_generator)

    def _shifts(self, n, side):
        if not self.whole_pixels:
            return self._uniform(n, self.shift) * side
        most = np.floor(self.shift * side)  # -most .. most pixels, each equally likely
        return keras.ops.floor(keras.random.uniform((n,), -most, most + 1, seed=self.seed_generator))

    def _flips(self, n, enabled):
        if not enabled:
            return keras.ops.ones((n,))
        coin = keras.random.uniform((n,), seed=self.seed_generator)
        return keras.ops.where(coin < 0.5, -1.0, 1.0)

    def call(self, images, training=True):
        if not training:
            return images
        n = keras.ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]
        transforms = affine_transforms(
            self._uniform(n, self.rotation * np.pi / 180),
            self._shifts(n, width), self._shifts(n, height),
            self._flips(n, self.horizontal_flip), self._flips(n, self.vertical_flip),
            height, width)
        if self.xla:
            return resample_affine(images, transforms, self.fill_mode)
        return keras.ops.image.affine_transform(images, transforms, interpolation="bilinear",
                                                fill_mode=self.fill_mode)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rotation": self.rotation, "shift": self.shift,
                "horizontal_flip": self.horizontal_flip, "vertical_flip": self.vertical_flip,
                "fill_mode": self.fill_mode, "seed": self.seed, "xla": self.xla,
                "whole_pixels": self.whole_pixels}


def build_augmentation(kind, seed=0, xla=False, mirror=True):
    """The random transform applied to training batches.

    Args:
        kind: a preset of ``AUGMENTATIONS`` ("original", "tuned", "resnet9") or None.
        seed: its random seed (default 0).
        xla: default False: TensorFlow's resampling kernel (for tf.data on a CPU); True:
            ``resample_affine``, compilable by XLA (the first layer of the model being trained).
        mirror: default True: the preset's random horizontal flip; False: none (the batches
            mirror the images instead: ``AlternatingFlips``).

    Returns:
        A float32 ``RandomAffine`` layer, or None for ``kind=None``.
    """
    if kind is None:
        return None
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; expected None or one of {list(AUGMENTATIONS)}")
    preset = AUGMENTATIONS[kind] if mirror else {**AUGMENTATIONS[kind], "horizontal_flip": False}
    # float32 even under mixed precision: the random angles and shifts are float32.
    return RandomAffine(**preset, seed=seed, xla=xla, name=f"augment_{kind}", dtype="float32")


AUGMENT_PLACES = ("auto", "pipeline", "model")


def augment_in_model(augment_on="auto"):
    """Where augmentation runs.

    "auto" puts it inside the training step when a GPU is present (batches travel to the GPU
    as uint8 and are transformed there, compiled with the rest of the step by XLA; the host
    CPU only gathers them) and in the parallel tf.data map on CPU-only machines (there it runs
    beside the training step instead of inside it). The tf.data map needs TensorFlow: on
    other backends augmentation always runs in the model.

    Args:
        augment_on: "auto" (default), "pipeline" or "model".

    Returns:
        ``True`` for inside the training step, ``False`` for the tf.data map.
    """
    if augment_on not in AUGMENT_PLACES:
        raise ValueError(f"augment_on must be one of {AUGMENT_PLACES}, got {augment_on!r}")
    if backend() != "tensorflow":
        if augment_on == "pipeline":
            raise ValueError(f"augment_on='pipeline' needs TensorFlow's tf.data; under "
                             f"{backend()} augmentation runs in the model ('model' or 'auto')")
        return True
    if augment_on == "auto":
        return bool(gpu_names())
    return augment_on == "model"


def with_augmentation(model, augment):
    """``augment -> model`` as one model to train.

    Args:
        model: the model that gets saved; it stays free of augmentation.
        augment: the augmentation layer.

    Returns:
        A model sharing ``model``'s layers, so that training it trains ``model``.
    """
    inputs = keras.Input(shape=model.input_shape[1:], name="image")
    return keras.Model(inputs, model(augment(inputs)), name=f"{model.name}_augmented")


def pipeline_augmentation(kind, seed, augment_on, mirror=True):
    """The augmentation for the tf.data map.

    Args:
        kind: a preset of ``AUGMENTATIONS`` or None.
        seed: its random seed.
        augment_on: "auto", "pipeline" or "model": see ``augment_in_model``.
        mirror: default True; False: without the preset's random flip (see ``build_augmentation``).

    Returns:
        A ``RandomAffine`` layer; None when there is no augmentation or it runs in the model.
    """
    if kind is None or augment_in_model(augment_on):
        return None
    return build_augmentation(kind, seed, mirror=mirror)


def model_to_train(model, kind, seed, augment_on, corruption=None, mirror=True):
    """``model``, preceded by augmentation ``kind`` when that runs in the model, and by the
    corruption preset ``corruption`` (always in the model: element-wise and cheap).

    Call it under the strategy that built ``model``.

    Args:
        model: the model to train.
        kind: a preset of ``AUGMENTATIONS`` or None.
        seed: the augmentation's random seed.
        augment_on: "auto", "pipeline" or "model": see ``augment_in_model``.
        corruption: a preset of ``CORRUPTIONS`` or None (default).
        mirror: default True; False: without the preset's random flip (see ``build_augmentation``).

    Returns:
        ``model`` itself, or ``with_augmentation(model, ...)`` with an XLA-compilable
        ``RandomAffine`` and/or a ``RandomCorruption`` in front (in that order).
    """
    steps = []
    if kind is not None and augment_in_model(augment_on):
        steps.append(build_augmentation(kind, seed, xla=True, mirror=mirror))
    if corruption is not None:
        steps.append(build_corruption(corruption, seed))
    if not steps:
        return model
    return with_augmentation(model, steps[0] if len(steps) == 1 else keras.Sequential(steps))


class AlternatingFlips(keras.callbacks.Callback):
    """Each training image mirrored in every other epoch instead of at random, as in the
    CIFAR training-speed records: a random half of the images is mirrored in the first epoch,
    the other half in the second, and so on. Random flips can show an image the same way round
    several epochs running; these show it both ways in every two epochs, which counts in a
    short run.

    The batches call it with the rows they gather (``inputs.make_batches(..., flips=...)``).
    As a callback of ``fit`` it learns each epoch's number before Keras starts that epoch's
    batches, so a resumed run goes on alternating where it stopped.

    Args:
        count: the number of training images.
        seed: which half starts mirrored (default 0).
    """

    def __init__(self, count, seed=0):
        super().__init__()
        self.first = np.random.default_rng(seed).random(count) < 0.5
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = int(epoch)

    def mirrored(self, rows):
        """Whether each of ``rows`` (indices of training images) is mirrored this epoch."""
        return self.first[rows] ^ (self.epoch % 2 == 1)

    def __call__(self, images, rows):
        """``images`` (a gathered batch, NHWC, changed in place) with this epoch's rows mirrored."""
        flip = self.mirrored(np.asarray(rows))
        images[flip] = images[flip][:, :, ::-1]
        return images


# ---------------------------------------------------------------------------
# Corruption augmentation: noise, blur and contrast changes seen in training, so that the
# model does not meet them for the first time at test time (robustness.py measures them).
# ---------------------------------------------------------------------------

def box_blur(images):
    """Each pixel replaced by the mean of its 3x3 neighbourhood (edges: of the pixels inside)."""
    return keras.ops.average_pool(images, 3, strides=1, padding="same")


@keras.saving.register_keras_serializable(package="cifar100cnn")
class RandomCorruption(layers.Layer):
    """Per image and independently: Gaussian noise, a blur and a contrast change, each with
    its own probability and a random strength (training only; pixels stay in [0, 255]).

    - noise: std ~ U(0, ``noise_std``) x 255 (``noise_std`` as a fraction of full scale);
    - blur: the image mixed with its 3x3 box blur, weight ~ U(0, 1);
    - contrast: the distance to the image's mean scaled by ~ U(``contrast_low``, 1).

    Only element-wise maths and one pooling: cheap beside the network, and XLA-compilable.
    Its ``active`` variable (1: on) lets ``CorruptionOff`` turn it off for the last epochs
    without rebuilding the compiled training step.
    """

    def __init__(self, noise=0.0, noise_std=0.1, blur=0.0, contrast=0.0, contrast_low=0.2,
                 seed=None, **kwargs):
        super().__init__(**kwargs)
        self.noise, self.noise_std = float(noise), float(noise_std)
        self.blur, self.contrast, self.contrast_low = float(blur), float(contrast), float(contrast_low)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.active = self.add_weight(shape=(), initializer="ones", trainable=False,
                                      name="active", dtype="float32")
        self.supports_jit = True

    def _strength(self, n, probability, low, high):
        """Per image: U(low, high) with ``probability``, else 0 (shape (n, 1, 1, 1))."""
        ops = keras.ops
        chosen = keras.random.uniform((n,), seed=self.seed_generator) < probability
        amount = keras.random.uniform((n,), low, high, seed=self.seed_generator)
        return ops.reshape(ops.where(chosen, amount, 0.0), (-1, 1, 1, 1))

    def call(self, images, training=True):
        if not training:
            return images
        ops = keras.ops
        n = ops.shape(images)[0]
        x = images
        if self.blur:
            x = x + self._strength(n, self.blur, 0.0, 1.0) * (box_blur(x) - x)
        if self.contrast:
            mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
            x = mean + (x - mean) * (1.0 - self._strength(n, self.contrast, 0.0, 1.0 - self.contrast_low))
        if self.noise:
            std = self._strength(n, self.noise, 0.0, 255.0 * self.noise_std)
            x = x + std * keras.random.normal(ops.shape(x), seed=self.seed_generator)
        # Off (active 0) gives back the images exactly: the random draws still run, so the
        # step's shape and the seed stream do not depend on the switch.
        return images + self.active * (ops.clip(x, 0.0, 255.0) - images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "noise": self.noise, "noise_std": self.noise_std,
                "blur": self.blur, "contrast": self.contrast, "contrast_low": self.contrast_low,
                "seed": self.seed}


# Presets of corruption augmentation: the probability that a training image gets each change
# (benchmarks/screen_third.py screens them; docs/recipes/robustness.md shows what each did).
CORRUPTIONS = {
    "noise": dict(noise=0.5),
    "noise25": dict(noise=0.25),
    "noise10": dict(noise=0.1),
    "noise05": dict(noise=0.05),
    "noise025": dict(noise=0.025),  # a fortieth
    "mixed": dict(noise=0.5, blur=0.3, contrast=0.3),
    "mixed_light": dict(noise=0.3, blur=0.2, contrast=0.2),
    "mixed_heavy": dict(noise=0.6, blur=0.4, contrast=0.4),
}


class CorruptionOff(keras.callbacks.Callback):
    """Turns the ``RandomCorruption`` layers of the trained model off from epoch ``first``
    (counted from 0) on, and on before it: the last epochs, at a small learning rate, then
    see clean images only. Set at every epoch's start, so a resumed run gets it right."""

    def __init__(self, first):
        super().__init__()
        self.first = int(first)

    def on_epoch_begin(self, epoch, logs=None):
        for layer in corruption_layers(self.model):
            layer.active.assign(0.0 if epoch >= self.first else 1.0)


def corruption_layers(layer):
    """The ``RandomCorruption`` layers in ``layer`` and the models nested in it."""
    if isinstance(layer, RandomCorruption):
        yield layer
    for inner in getattr(layer, "layers", ()):
        yield from corruption_layers(inner)


def corruption_callbacks(recipe):
    """The callbacks the recipe's corruption schedule needs: ``CorruptionOff`` for its last
    ``clean_epochs``, or none."""
    if recipe.corruption is None or not recipe.clean_epochs:
        return []
    return [CorruptionOff(recipe.epochs - recipe.clean_epochs)]


def build_corruption(kind, seed=0):
    """The ``RandomCorruption`` of preset ``kind`` (a key of ``CORRUPTIONS``), float32.

    Args:
        kind: a preset of ``CORRUPTIONS``.
        seed: its random seed (default 0).

    Returns:
        A ``RandomCorruption`` layer.
    """
    if kind not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {kind!r}; expected None or one of {list(CORRUPTIONS)}")
    return RandomCorruption(**CORRUPTIONS[kind], seed=seed, name=f"corrupt_{kind}", dtype="float32")
