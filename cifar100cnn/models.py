"""The four models of the original project, plus our tuned third model.

Every model takes raw 32x32x3 images with pixel values 0-255 (uint8 or float) and holds its
own preprocessing as built-in, parameter-free or frozen layers, so any saved model loads
with ``keras.models.load_model(path)`` under ``safe_mode=True`` and needs no custom code.

What each model is (its sizes) and how it trains is its recipe, in ``recipes``; ``build``
makes the model a recipe describes.
"""

import dataclasses

import keras
import numpy as np
from keras import layers

from .data import IMAGE_SHAPE, NUM_CLASSES
from .recipes import RECIPES, THIRD_ORIGINAL, THIRD_PRESETS, THIRD_RESNET9, THIRD_TUNED, Recipe  # noqa: F401

# The tuned network's fixed constants, taken from the CIFAR speed records (not searched; a
# recipe changes only its widths and dropout):
LOGIT_SCALE = 1 / 9  # factor on the logits before the softmax
BN_MOMENTUM = 0.9  # batch norm's moving-average momentum (Keras' default: 0.99)
BN_EPSILON = 1e-5
WHITEN_PATCH = 2  # side in pixels of the frozen whitening convolution
WHITEN_EPS = THIRD_TUNED.whiten_eps  # added to the patch covariance's eigenvalues (a recipe may change it)
WHITEN_FILTERS = 2 * WHITEN_PATCH ** 2 * 3  # each eigenvector and its negative
IMAGE_NORM_EPSILON = 1.0  # per-image standardization: added to the variance (pixels 0-255)


def image_input(name="image"):
    """The input of every model: raw 32x32x3 images with pixel values 0-255.

    Args:
        name: the input's name (default "image").

    Returns:
        A Keras tensor.
    """
    return keras.Input(shape=IMAGE_SHAPE, name=name)


def _rescale(inputs):
    return layers.Rescaling(1.0 / 255, name="rescale_0_1")(inputs)


def classifier(x, name="predictions"):
    """The 100-way softmax every model ends with (float32 under mixed precision).

    Args:
        x: the features, a Keras tensor.
        name: the layer's name (default "predictions").

    Returns:
        The class probabilities, a Keras tensor.
    """
    # float32 output keeps softmax stable under mixed precision.
    return layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32", name=name)(x)


def build_baseline():
    """Conv32 -> pool -> Dense256 -> Dense100.

    Returns:
        A Keras model: 1,870,052 parameters.
    """
    inputs = image_input()
    x = _rescale(inputs)
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu")(x)
    return keras.Model(inputs, classifier(x), name="baseline")


def _original_conv_base(x):
    x = layers.Conv2D(32, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(64, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(128, 3, activation="relu")(x)
    return layers.Flatten()(x)


def build_overfit():
    """Conv32-pool-Conv64-pool-Conv128 -> Dense512 -> Dense256 -> Dense100.

    Returns:
        A Keras model: 1,299,364 parameters.
    """
    inputs = image_input()
    x = _original_conv_base(_rescale(inputs))
    x = layers.Dense(512, activation="relu")(x)
    x = layers.Dense(256, activation="relu")(x)
    return keras.Model(inputs, classifier(x), name="overfit")


def build_third_original(dropout=THIRD_ORIGINAL.dropout):
    """The original third model: the overfit conv base, Dropout(0.5), Dense256.

    Args:
        dropout: the dropout rate (default the recipe's, 0.5).

    Returns:
        A Keras model: 643,492 parameters.
    """
    inputs = image_input()
    x = _original_conv_base(_rescale(inputs))
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(256, activation="relu")(x)
    return keras.Model(inputs, classifier(x), name="third_original")


def _conv_bn(x, filters, pool=False):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False,
                      kernel_initializer="he_normal")(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    return layers.MaxPooling2D(2)(x) if pool else x


def _residual(x, filters):
    y = _conv_bn(_conv_bn(x, filters), filters)
    return layers.Add()([x, y])


def build_resnet9(width=THIRD_RESNET9.width, dropout=THIRD_RESNET9.dropout):
    """Our earlier tuned third model, a ResNet-9-style network: BN conv blocks, two residual
    stages, global pooling.

    Args:
        width: channels of the first convolution (default 32: 1.67 M parameters, 160-550 s per
            40,000-image epoch on two CPU cores depending on the CPU, docs/BENCHMARKS.md); 16 is
            about four times cheaper; 64 (6.6 M) suits GPUs.
        dropout: dropout rate before the classifier (default 0.2).

    Returns:
        A Keras model.
    """
    inputs = image_input()
    x = _standardize(inputs)
    x = _conv_bn(x, width)
    x = _conv_bn(x, 2 * width, pool=True)
    x = _residual(x, 2 * width)
    x = _conv_bn(x, 4 * width, pool=True)
    x = _conv_bn(x, 8 * width, pool=True)
    x = _residual(x, 8 * width)
    x = layers.GlobalMaxPooling2D()(x)
    x = layers.Dropout(dropout)(x)
    return keras.Model(inputs, classifier(x), name="resnet9")


CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)


def _standardize(inputs):
    """0-255 pixels -> CIFAR-100 channel standardization (fixed, parameter-free)."""
    std = 255 * np.array(CIFAR100_STD)
    return layers.Rescaling(1.0 / std, offset=-np.array(CIFAR100_MEAN) * 255 / std,
                            name="standardize")(inputs)


def _standardize_each(inputs):
    """0-255 pixels -> each image less its own mean, over its own standard deviation (over
    all pixels and channels): a contrast change or a brightness shift leaves it (nearly)
    unchanged. Parameter-free; a built-in layer, so saved models need no custom code."""
    return layers.LayerNormalization(axis=(1, 2, 3), center=False, scale=False,
                                     epsilon=IMAGE_NORM_EPSILON, name="standardize_image")(inputs)


def standardized_patches(pixels, image_means=None, image_stds=None):
    """Pixel patches (count, p, p, c) standardized as the network's first layer does: by
    CIFAR-100's channel statistics, or, given each patch's image mean and standard deviation
    (shape (count,)), as ``_standardize_each`` does."""
    pixels = pixels.astype("float32")
    if image_means is None:
        return (pixels / 255 - np.array(CIFAR100_MEAN, "float32")) / np.array(CIFAR100_STD, "float32")
    scale = np.sqrt(image_stds.astype("float32") ** 2 + IMAGE_NORM_EPSILON)
    return (pixels - image_means[:, None, None, None]) / scale[:, None, None, None]


def whitening_kernel(images, patch=WHITEN_PATCH, eps=WHITEN_EPS, max_patches=200_000, seed=0,
                     input_norm=THIRD_TUNED.input_norm):
    """A ``patch`` x ``patch`` convolution kernel that whitens image patches (ZCA-like, as in
    the CIFAR speed records): the covariance's eigenvectors scaled by 1/sqrt(eigenvalue),
    each with its negative, so ReLU/GELU after it keeps both signs.

    Args:
        images: uint8 (N, 32, 32, 3) training images (never validation or test images).
        patch: the kernel's side in pixels (default 2).
        eps: added to the eigenvalues (default the tuned recipe's, 5e-4).
        max_patches: patches sampled at the most (default 200,000).
        seed: the sampling seed (default 0).
        input_norm: how the network standardizes its input before this layer: "dataset"
            (the tuned recipe's default: CIFAR-100's channel statistics) or "image" (each
            image by its own, as the robust recipe does).

    Returns:
        A float32 array of shape (patch, patch, 3, 2 * patch^2 * 3).
    """
    rng = np.random.default_rng(seed)
    images = np.asarray(images)
    n, h, w, c = images.shape
    count = min(max_patches, n * (h - patch + 1) * (w - patch + 1))
    idx, ys, xs = (rng.integers(0, limit, count) for limit in (n, h - patch + 1, w - patch + 1))
    offsets = np.arange(patch)
    pixels = images[idx[:, None, None], ys[:, None, None] + offsets[None, :, None],
                    xs[:, None, None] + offsets[None, None, :]]  # (count, p, p, c)
    # Standardized after sampling: the same values, without a float copy of every image.
    if input_norm == "image":
        sampled = images[idx].reshape(count, -1).astype("float32")
        patches = standardized_patches(pixels, sampled.mean(axis=1), sampled.std(axis=1))
    else:
        patches = standardized_patches(pixels)
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
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
                                      name=f"{name}_bn{i + 1}")(x)
        x = layers.Activation(activation, name=f"{name}_act{i + 1}")(x)
    return x


def build_third_tuned(widths=THIRD_TUNED.widths, whitening=None, activation="relu",
                     logit_scale=LOGIT_SCALE, dropout=THIRD_TUNED.dropout,
                     input_norm=THIRD_TUNED.input_norm):
    """The speed-record family of CIFAR networks: a frozen 2x2 whitening convolution, three
    conv-pool blocks, global max pooling and a scaled-down linear classifier.

    Args:
        widths: channels of the three blocks (default the recipe's, ``(128, 256, 512)``).
        whitening: optional kernel from ``whitening_kernel`` (shape (2, 2, 3, 24)); ``None``
            (default) keeps the layer's random initialization (still frozen).
        activation: ``"relu"`` (default) or ``"gelu"``.
        logit_scale: factor on the logits before the softmax (default ``LOGIT_SCALE``, 1/9).
        dropout: dropout rate before the classifier (default the recipe's, 0).
        input_norm: "dataset" (the tuned recipe's default: CIFAR-100's channel mean and std)
            or "image" (each image by its own mean and std); compute ``whitening`` the same way.

    Returns:
        A Keras model: 4,657,464 parameters with the default widths.
    """
    inputs = image_input()
    x = _standardize_each(inputs) if input_norm == "image" else _standardize(inputs)
    whiten = layers.Conv2D(WHITEN_FILTERS, WHITEN_PATCH, padding="valid", name="whiten",
                           trainable=False)
    x = whiten(x)
    if whitening is not None:
        whiten.set_weights([np.asarray(whitening, "float32"), np.zeros(WHITEN_FILTERS, "float32")])
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


# The recipe fields each model's architecture reads; the others must keep their defaults.
ARCHITECTURE_FIELDS = {"baseline": (), "overfit": (), "third_original": ("dropout",),
                       "third_tuned": ("widths", "dropout", "whiten_eps", "input_norm"), "third_resnet9": ("width", "dropout")}
# Recipes that train another recipe's network (the robust third model is the tuned network).
SAME_NETWORK_AS = {"third_robust": "third_tuned"}
_DEFAULTS = {field.name: field.default for field in dataclasses.fields(Recipe)}


def build(name, recipe=None, whitening_images=None, whitening=None):
    """The model of recipe ``name``, its sizes read from ``recipe``.

    Args:
        name: "baseline", "overfit", "third_original", "third_tuned", "third_robust" (the
            tuned network) or "third_resnet9" (VGG16 is built by ``transfer``).
        recipe: a ``recipes.Recipe`` (default ``recipes.RECIPES[name]``). A size field the
            model has no use for (``widths`` for "baseline", ...) raises ``ValueError``.
        whitening_images: "third_tuned": the uint8 training images (never validation or test
            images) to compute the frozen whitening layer from. Default None: random (still
            frozen), fine for tests and timings, not for training. The other models have no
            whitening layer and ignore it.
        whitening: "third_tuned": a kernel already computed by ``whitening_kernel`` from the
            training images, instead of ``whitening_images``.

    Returns:
        A Keras model.
    """
    network = SAME_NETWORK_AS.get(name, name)
    if network not in ARCHITECTURE_FIELDS:
        raise ValueError(f"unknown model {name!r}; expected one of "
                         f"{list(ARCHITECTURE_FIELDS) + list(SAME_NETWORK_AS)} (VGG16: transfer.build_vgg16)")
    recipe = RECIPES[name] if recipe is None else recipe
    unread = [field for field in ("widths", "width", "dropout", "whiten_eps", "input_norm")
              if field not in ARCHITECTURE_FIELDS[network] and getattr(recipe, field) != _DEFAULTS[field]]
    if unread:
        raise ValueError(f"the {name} model has no use for the recipe's {unread}; leave them "
                         f"out (sizes it reads: {list(ARCHITECTURE_FIELDS[network]) or 'none'}).")
    if network == "third_tuned":
        if whitening is None and whitening_images is not None:
            whitening = whitening_kernel(whitening_images, eps=recipe.whiten_eps,
                                         input_norm=recipe.input_norm)
        return build_third_tuned(tuple(recipe.widths), whitening, dropout=recipe.dropout,
                                 input_norm=recipe.input_norm)
    if name == "third_resnet9":
        return build_resnet9(recipe.width, recipe.dropout)
    if name == "third_original":
        return build_third_original(recipe.dropout)
    return build_baseline() if name == "baseline" else build_overfit()


def build_third(preset="tuned", whitening_images=None, recipe=None, **overrides):
    """The third model of ``preset``: "tuned" (ours), "original" (the original's recipe) or
    "robust" (the tuned network, its whitening eps from the robust recipe).

    Args:
        preset: "tuned" (default), "original" or "robust".
        whitening_images: training images (uint8) to initialise the tuned model's whitening
            layer from (default None: random, still frozen; fine for tests, not for training).
        recipe: the ``recipes.Recipe`` whose sizes to build (default the preset's).
        **overrides: recipe fields (e.g. ``widths``) changed before building; train with the
            same recipe (``recipes.recipe("third_tuned", widths=...)``).

    Returns:
        A Keras model.
    """
    if preset not in THIRD_PRESETS:
        raise ValueError(f"unknown third-model preset {preset!r}; expected one of {THIRD_PRESETS}")
    name = f"third_{preset}"
    recipe = dataclasses.replace(RECIPES[name] if recipe is None else recipe, **overrides)
    return build(name, recipe, whitening_images)


def forward_flops(model):
    """FLOPs (2 x multiply-adds) of the Conv2D and Dense layers for one image, one forward
    pass; the other layers are cheap. A training step costs about three times this.

    Args:
        model: a Keras model (nested models, e.g. VGG16's base and head, are counted too).

    Returns:
        An int.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += forward_flops(layer)
        elif isinstance(layer, (layers.Conv2D, layers.Dense)):
            positions = int(np.prod(layer.output.shape[1:-1]))  # 1 for Dense on vectors
            total += 2 * int(np.prod(layer.kernel.shape)) * positions
    return total
