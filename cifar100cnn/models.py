"""The four models of the original project, plus our tuned third model.

Every model takes raw 32x32x3 images with pixel values 0-255 (uint8 or float) and holds its
own preprocessing as built-in, parameter-free or frozen layers, so any saved model loads
with ``keras.models.load_model(path)`` under ``safe_mode=True`` and needs no custom code.

Each recipe's hyperparameters live in ``RECIPES`` below, in one place.
"""

import os

import keras
import numpy as np
from keras import layers

from .data import IMAGE_SHAPE, NUM_CLASSES

# VGG16's own ("caffe") preprocessing: RGB -> BGR, then subtract the ImageNet BGR mean.
VGG16_BGR_MEAN = (103.939, 116.779, 123.68)
VGG16_BASE_PARAMS = 14_714_688

# One place for every recipe's training hyperparameters.
# steps_per_execution runs several batches per call into TensorFlow: it pays off where the
# per-batch overhead dominates (the VGG16 head on cached features: about 2x; overfit: 1.2x).
RECIPES = {
    "baseline": dict(epochs=30, batch_size=100, optimizer="rmsprop", learning_rate=1e-3,
                     augmentation=None, early_stopping=None),
    "overfit": dict(epochs=100, batch_size=100, optimizer="rmsprop", learning_rate=1e-3,
                    augmentation=None, early_stopping=None, steps_per_execution=20),
    # The original's third model: rotation 40 deg, vertical flip, shifts 0.2 (nearest fill).
    "third_original": dict(epochs=30, batch_size=100, optimizer="rmsprop", learning_rate=1e-3,
                       augmentation="original", early_stopping=None, steps_per_execution=20),
    # Ours: the CIFAR speed-record family (whitened input, three wide conv-pool blocks),
    # trained briefly at a high rate: 0.73 test top-1 in less time than the ResNet-9 below.
    "third_tuned": dict(epochs=16, batch_size=512, optimizer="sgd", learning_rate=1.2,
                        momentum=0.9, weight_decay=1e-2, label_smoothing=0.2, warmup=0.15,
                        widths=(128, 256, 512), augmentation="tuned", early_stopping=None),
    # Our earlier tuned recipe (ResNet-9 style, width 32): 0.644, kept for comparison.
    "third_resnet9": dict(epochs=30, batch_size=128, optimizer="sgd", learning_rate=0.1,
                          momentum=0.9, weight_decay=5e-4, label_smoothing=0.1,
                          width=32, dropout=0.2, augmentation="resnet9", early_stopping=8),
    # VGG16 head on cached features of the frozen base. input_size > 32 upscales the images
    # inside the model before the base (an option for GPU users: cost grows as its square).
    "vgg16": dict(epochs=100, batch_size=100, optimizer="rmsprop", learning_rate=1e-3,
                  augmentation=None, early_stopping=None, steps_per_execution=50,
                  input_size=32),
    # Optional fine-tuning of block 5 after the head is trained (GPU users).
    "vgg16_finetune": dict(epochs=10, batch_size=100, optimizer="rmsprop", learning_rate=1e-5,
                           augmentation="tuned", early_stopping=4),
}
THIRD_PRESETS = ("tuned", "original")


def _inputs(name="image"):
    return keras.Input(shape=IMAGE_SHAPE, name=name)


def _rescale(inputs):
    return layers.Rescaling(1.0 / 255, name="rescale_0_1")(inputs)


def _classifier(x, name="predictions"):
    # float32 output keeps softmax stable under mixed precision.
    return layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name=name)(x)


def build_baseline():
    """Conv32 -> pool -> Dense256 -> Dense100: 1,870,052 parameters."""
    inputs = _inputs()
    x = _rescale(inputs)
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu")(x)
    return keras.Model(inputs, _classifier(x), name="baseline")


def _original_conv_base(x):
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(64, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(128, 3, activation="relu")(x)
    return layers.Flatten()(x)


def build_overfit():
    """Conv32-pool-Conv64-pool-Conv128 -> Dense512 -> Dense256 -> Dense100: 1,299,364 parameters."""
    inputs = _inputs()
    x = _original_conv_base(_rescale(inputs))
    x = layers.Dense(512, activation="relu")(x)
    x = layers.Dense(256, activation="relu")(x)
    return keras.Model(inputs, _classifier(x), name="overfit")


def build_third_original():
    """The original third model: the overfit conv base, Dropout(0.5), Dense256: 643,492 parameters."""
    inputs = _inputs()
    x = _original_conv_base(_rescale(inputs))
    x = layers.Dropout(0.5)(x)
    x = layers.Dense(256, activation="relu")(x)
    return keras.Model(inputs, _classifier(x), name="third_original")


def _conv_bn(x, filters, pool=False):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                      kernel_initializer="he_normal")(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    return layers.MaxPooling2D(2)(x) if pool else x


def _residual(x, filters):
    y = _conv_bn(_conv_bn(x, filters), filters)
    return layers.Add()([x, y])


def build_resnet9(width=32, dropout=0.2):
    """Our earlier tuned third model, a ResNet-9-style network: BN conv blocks, two residual stages, global pooling.

    ``width`` 32 gives 1.67 M parameters (160-550 s per 40,000-image epoch on two CPU cores,
    depending on the CPU: see docs/BENCHMARKS.md); 16 is about four times cheaper; 64 (6.6 M)
    suits GPUs.
    """
    inputs = _inputs()
    x = _standardize(inputs)
    x = _conv_bn(x, width)
    x = _conv_bn(x, 2 * width, pool=True)
    x = _residual(x, 2 * width)
    x = _conv_bn(x, 4 * width, pool=True)
    x = _conv_bn(x, 8 * width, pool=True)
    x = _residual(x, 8 * width)
    x = layers.GlobalMaxPooling2D()(x)
    x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, _classifier(x), name="resnet9")


CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def _standardize(inputs):
    """0-255 pixels -> CIFAR-100 channel standardization (fixed, parameter-free)."""
    std = 255 * np.array(CIFAR100_STD)
    return layers.Rescaling(1.0 / std, offset=-np.array(CIFAR100_MEAN) * 255 / std,
                            name="standardize")(inputs)


def whitening_kernel(images, patch=2, eps=5e-4, max_patches=200_000, seed=0):
    """A ``patch`` x ``patch`` convolution kernel that whitens image patches (ZCA-like, as in
    the CIFAR speed records): the covariance's eigenvectors scaled by 1/sqrt(eigenvalue),
    each with its negative, so ReLU/GELU after it keeps both signs. Shape (p, p, 3, 2 p^2 3).

    ``images``: uint8 (N, 32, 32, 3) training images (never validation or test images).
    """
    rng = np.random.default_rng(seed)
    x = (images.astype("float32") / 255 - np.array(CIFAR100_MEAN, "float32")) / np.array(CIFAR100_STD, "float32")
    n, h, w, c = x.shape
    count = min(max_patches, n * (h - patch + 1) * (w - patch + 1))
    idx, ys, xs = (rng.integers(0, limit, count) for limit in (n, h - patch + 1, w - patch + 1))
    offsets = np.arange(patch)
    patches = x[idx[:, None, None], ys[:, None, None] + offsets[None, :, None],
                xs[:, None, None] + offsets[None, None, :]]  # (count, p, p, c)
    flat = patches.reshape(count, -1).astype("float64")
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(flat, rowvar=False))
    filters = eigenvectors / np.sqrt(eigenvalues + eps)
    kernel = np.concatenate([filters, -filters], axis=1)
    return kernel.reshape(patch, patch, c, -1).astype("float32")


def _fast_block(x, filters, activation, name):
    """conv -> max-pool -> BN -> act -> conv -> BN -> act: the CIFAR speed-record block."""
    for i in range(2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                          kernel_initializer="he_normal", name=f"{name}_conv{i + 1}")(x)
        if i == 0:
            x = layers.MaxPooling2D(2, name=f"{name}_pool")(x)
        x = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn{i + 1}")(x)
        x = layers.Activation(activation, name=f"{name}_act{i + 1}")(x)
    return x


def build_third_tuned(widths=(128, 256, 512), whitening=None, activation="relu",
                     logit_scale=1 / 9, dropout=0.0):
    """The speed-record family of CIFAR networks: a frozen 2x2 whitening convolution, three
    conv-pool blocks, global max pooling and a scaled-down linear classifier.

    Args:
        widths: channels of the three blocks (default ``(128, 256, 512)``).
        whitening: optional kernel from ``whitening_kernel`` (shape (2, 2, 3, 24)); ``None``
            keeps the layer's random initialization (still frozen).
        activation: ``"relu"`` (default) or ``"gelu"``.
        logit_scale: factor on the logits before the softmax (default 1/9).
        dropout: dropout rate before the classifier (default 0).
    """
    inputs = _inputs()
    x = _standardize(inputs)
    whiten = layers.Conv2D(24, 2, padding="valid", name="whiten", trainable=False)
    x = whiten(x)
    if whitening is not None:
        whiten.set_weights([np.asarray(whitening, "float32"), np.zeros(24, "float32")])
    x = layers.Activation(activation, name="whiten_act")(x)
    for i, width in enumerate(widths):
        x = _fast_block(x, width, activation, f"block{i + 1}")
    x = layers.GlobalMaxPooling2D()(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    x = layers.Dense(NUM_CLASSES, use_bias=False, name="logits")(x)
    x = layers.Rescaling(logit_scale, name="logit_scale")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="predictions")(x)
    return keras.Model(inputs, outputs, name="third_tuned")


def build_third(preset="tuned", whitening_images=None, **overrides):
    """The third model of ``preset``: "tuned" (ours) or "original" (the original's recipe).

    Args:
        preset: "tuned" (default) or "original".
        whitening_images: training images (uint8) to initialise the tuned model's whitening
            layer from (default None: random, still frozen; fine for tests, not for training).
        **overrides: architecture arguments of ``build_third_tuned`` instead of the recipe's.
    """
    if preset == "original":
        return build_third_original()
    if preset == "tuned":
        recipe = RECIPES["third_tuned"]
        whitening = None if whitening_images is None else whitening_kernel(whitening_images)
        return build_third_tuned(**{"widths": recipe["widths"], "whitening": whitening, **overrides})
    raise ValueError(f"unknown third-model preset {preset!r}; expected one of {THIRD_PRESETS}")


# ---------------------------------------------------------------------------
# Augmentation
# ---------------------------------------------------------------------------

# Each preset: rotation range (degrees), shift range (fraction of the side), flips, fill.
AUGMENTATIONS = {
    # The original's ImageDataGenerator: rotation 40, shifts 0.2, vertical flip, nearest fill.
    "original": dict(rotation=40.0, shift=0.2, horizontal_flip=False, vertical_flip=True,
                 fill_mode="nearest"),
    # What suits natural images: mirror and shifts of up to 4 pixels.
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
    transform does: "nearest" clamps, "reflect" mirrors about the edge (d c b a | a b c d)."""
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
    """
    ops = keras.ops
    n = ops.shape(images)[0]
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    ys, xs = ops.meshgrid(ops.arange(height, dtype="float32"), ops.arange(width, dtype="float32"),
                          indexing="ij")
    a0, a1, a2, b0, b1, b2 = (transforms[:, i, None, None] for i in range(6))
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


def build_augmentation(kind, seed=0, xla=False):
    """The random transform applied to training batches (or None): in tf.data, or with
    ``xla=True`` as the first layer of the model being trained."""
    if kind is None:
        return None
    if kind not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {kind!r}; expected None or one of {list(AUGMENTATIONS)}")
    # float32 even under mixed precision: the random angles and shifts are float32.
    return RandomAffine(**AUGMENTATIONS[kind], seed=seed, xla=xla, name=f"augment_{kind}",
                        dtype="float32")


# ---------------------------------------------------------------------------
# VGG16 transfer
# ---------------------------------------------------------------------------

VGG16_WEIGHTS_HELP = (
    "The ImageNet weights of VGG16 could not be downloaded. On a machine with internet "
    "access, download vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 (58 MB) from "
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/ , copy it here and "
    "pass its path as `vgg16_weights=` (notebook parameter; CLI --vgg16-weights) or set the "
    "environment variable VGG16_WEIGHTS=/path/to/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5, "
    "which the notebooks and the CLI read.")


class WeightsUnavailableError(RuntimeError):
    """VGG16's ImageNet weights cannot be obtained."""


def resolve_vgg16_weights(weights="imagenet"):
    """``weights`` ("imagenet", None or a local file), checked: a given file must exist."""
    if weights not in ("imagenet", None) and not os.path.isfile(weights):
        raise WeightsUnavailableError(f"VGG16 weights file not found: {weights!r}.\n"
                                      + VGG16_WEIGHTS_HELP)
    return weights


VGG16_INPUT_SIZES = range(32, 225)  # VGG16 needs at least 32x32; 224 is its ImageNet size


def check_vgg16_input_size(input_size):
    if input_size not in VGG16_INPUT_SIZES:
        raise ValueError(f"VGG16 input size must be an integer from 32 to 224, got {input_size!r}")
    return input_size


def build_vgg16_base(weights="imagenet", input_size=32):
    """The frozen convolutional base of VGG16 (14,714,688 parameters) for square inputs of
    ``input_size`` pixels: 32 (CIFAR's own size, as the original) or upscaled."""
    weights = resolve_vgg16_weights(weights)
    shape = (check_vgg16_input_size(input_size),) * 2 + (3,)
    try:
        base = keras.applications.VGG16(include_top=False, weights=weights, input_shape=shape)
    except Exception as error:
        if weights != "imagenet":
            raise
        raise WeightsUnavailableError(f"{VGG16_WEIGHTS_HELP}\n({type(error).__name__}: {error})") from None
    base.trainable = False
    return base


def vgg16_preprocessing():
    """VGG16's caffe preprocessing as a frozen 1x1 convolution (no Lambda, no custom code).

    Channel c of the output is ``x[..., 2 - c] - VGG16_BGR_MEAN[c]``, exactly
    ``keras.applications.vgg16.preprocess_input``. Kept in float32 under mixed precision.
    """
    layer = layers.Conv2D(3, 1, name="vgg16_preprocess", dtype="float32", trainable=False)
    layer.build((None,) + IMAGE_SHAPE)
    swap_rgb_bgr = np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3)
    layer.set_weights([swap_rgb_bgr, -np.array(VGG16_BGR_MEAN, dtype="float32")])
    return layer


def vgg16_front(inputs, input_size=32):
    """Raw 0-255 images -> (upscaled to ``input_size``) -> VGG16 preprocessing."""
    x = inputs
    if input_size != inputs.shape[1]:
        # float32, like the preprocessing: float16 would round the 0-255 pixel values.
        x = layers.Resizing(input_size, input_size, interpolation="bilinear",
                            dtype="float32", name="upscale")(x)
    return vgg16_preprocessing()(x)


def build_vgg16_head(feature_shape=(1, 1, 512)):
    """Flatten -> Dense512 -> Dense256 -> Dense100 on VGG16 features: 419,684 parameters."""
    features = keras.Input(shape=feature_shape, name="vgg16_features")
    x = layers.Flatten()(features)
    x = layers.Dense(512, activation="relu")(x)
    x = layers.Dense(256, activation="relu")(x)
    return keras.Model(features, _classifier(x), name="vgg16_head")


def assemble_vgg16(base, head):
    """One model from raw 32x32 images: (upscale ->) preprocessing -> frozen base -> head."""
    inputs = _inputs()
    x = base(vgg16_front(inputs, base.input_shape[1]), training=False)
    return keras.Model(inputs, head(x), name="vgg16_transfer")


def build_vgg16(weights="imagenet", input_size=32):
    base = build_vgg16_base(weights, input_size)
    return assemble_vgg16(base, build_vgg16_head(base.output_shape[1:]))


def unfreeze_block5(model):
    """For fine-tuning: make VGG16's block 5 trainable, keep blocks 1-4 frozen."""
    base = next(layer for layer in model.layers if layer.name == "vgg16")
    base.trainable = True
    for layer in base.layers:
        layer.trainable = layer.name.startswith("block5")
    return model


def forward_flops(model):
    """FLOPs (2 x multiply-adds) of the Conv2D and Dense layers for one image, one forward
    pass, nested models (VGG16's base and head) included; the other layers are cheap.
    A training step costs about three times this."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += forward_flops(layer)
        elif isinstance(layer, (layers.Conv2D, layers.Dense)):
            positions = int(np.prod(layer.output.shape[1:-1]))  # 1 for Dense on vectors
            total += 2 * int(np.prod(layer.kernel.shape)) * positions
    return total
