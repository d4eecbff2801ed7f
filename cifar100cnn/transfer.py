"""VGG16 transfer: the frozen ImageNet base with its own preprocessing inside the model, a
head trained on features computed once, and optional fine-tuning of block 5."""

import os

import keras
import numpy as np
from keras import layers

from .data import IMAGE_SHAPE
from .hardware import current_strategy, precision_policy, resolve_precision, set_seed
from .inference import predict_in_batches
from .inputs import feature_batches
from .models import classifier, image_input
from .recipes import VGG16, VGG16_FINETUNE
from .training import (NotTheModelAskedFor, check_recipe, existing, fast_path, finish, fit,
                       fit_on_images, train_with_fallback)

# VGG16's own ("caffe") preprocessing: RGB -> BGR, then subtract the ImageNet BGR mean.
VGG16_BGR_MEAN = (103.939, 116.779, 123.68)
VGG16_BASE_PARAMS = 14_714_688

VGG16_WEIGHTS_HELP = (
    "To train VGG16, download vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 (58 MB) from "
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/ on a machine with "
    "internet access and pass its path: CLI --vgg16-weights FILE, notebook vgg16_weights=FILE, "
    "or VGG16_WEIGHTS=FILE in the environment.")


class WeightsUnavailableError(RuntimeError):
    """VGG16's ImageNet weights cannot be obtained."""


def resolve_vgg16_weights(weights="imagenet"):
    """``weights``, checked: a given file must exist.

    Args:
        weights: "imagenet" (default: the download), a path to a local .h5 file, or None
            (random weights). ``$VGG16_WEIGHTS`` is read by the notebooks and the CLI
            (``environment.vgg16_weights``), not here.

    Returns:
        ``weights``; ``WeightsUnavailableError`` for a file that does not exist.
    """
    if weights not in ("imagenet", None) and not os.path.isfile(weights):
        raise WeightsUnavailableError(f"VGG16 weights file not found: {weights!r}. "
                                      + VGG16_WEIGHTS_HELP)
    return weights


VGG16_INPUT_SIZES = range(32, 225)  # VGG16 needs at least 32x32; 224 is its ImageNet size


def check_vgg16_input_size(input_size):
    """``input_size`` if VGG16 can take it, else a ``ValueError``.

    Args:
        input_size: side in pixels of the images the base sees.

    Returns:
        ``input_size``, an integer from 32 to 224.
    """
    if input_size not in VGG16_INPUT_SIZES:
        raise ValueError(f"VGG16 input size must be an integer from 32 to 224, got {input_size!r}")
    return input_size


def build_vgg16_base(weights="imagenet", input_size=32):
    """The frozen convolutional base of VGG16 (14,714,688 parameters).

    Args:
        weights: "imagenet" (default), a local .h5 file or None: see ``resolve_vgg16_weights``.
        input_size: side in pixels of its square inputs (default 32, CIFAR's own size, as the
            original; up to 224 for upscaled images).

    Returns:
        A frozen Keras model; ``WeightsUnavailableError`` when the ImageNet weights cannot be
        downloaded.
    """
    weights = resolve_vgg16_weights(weights)
    shape = (check_vgg16_input_size(input_size),) * 2 + (3,)
    try:
        base = keras.applications.VGG16(include_top=False, weights=weights, input_shape=shape)
    except Exception as error:
        if weights != "imagenet":
            raise
        reason = str(error).split(" -- ")[-1]  # Keras: "URL fetch failure on URL: None -- why"
        raise WeightsUnavailableError(f"no ImageNet weights: the download failed ({reason}). "
                                      + VGG16_WEIGHTS_HELP) from None
    base.trainable = False
    return base


def vgg16_preprocessing():
    """VGG16's caffe preprocessing as a frozen 1x1 convolution (no Lambda, no custom code).

    Channel c of the output is ``x[..., 2 - c] - VGG16_BGR_MEAN[c]``, exactly
    ``keras.applications.vgg16.preprocess_input``. Kept in float32 under mixed precision.

    Returns:
        A built, frozen ``Conv2D`` layer.
    """
    layer = layers.Conv2D(3, 1, name="vgg16_preprocess", dtype="float32", trainable=False)
    layer.build((None,) + IMAGE_SHAPE)
    swap_rgb_bgr = np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3)
    layer.set_weights([swap_rgb_bgr, -np.array(VGG16_BGR_MEAN, dtype="float32")])
    return layer


def vgg16_front(inputs, input_size=32):
    """Raw 0-255 images -> (upscaled to ``input_size``) -> VGG16 preprocessing.

    Args:
        inputs: a Keras tensor of raw images.
        input_size: side in pixels the base expects (default 32: no upscaling).

    Returns:
        The preprocessed Keras tensor.
    """
    x = inputs
    if input_size != inputs.shape[1]:
        # float32, like the preprocessing: float16 would round the 0-255 pixel values.
        x = layers.Resizing(input_size, input_size, interpolation="bilinear",
                            dtype="float32", name="upscale")(x)
    return vgg16_preprocessing()(x)


def build_vgg16_head(feature_shape=(1, 1, 512)):
    """Flatten -> Dense512 -> Dense256 -> Dense100 on VGG16 features.

    Args:
        feature_shape: the base's output shape (default ``(1, 1, 512)``, that of 32x32 inputs).

    Returns:
        A Keras model: 419,684 parameters for the default shape.
    """
    features = keras.Input(shape=feature_shape, name="vgg16_features")
    x = layers.Flatten()(features)
    x = layers.Dense(512, activation="relu")(x)
    x = layers.Dense(256, activation="relu")(x)
    return keras.Model(features, classifier(x), name="vgg16_head")


def assemble_vgg16(base, head):
    """One model from raw 32x32 images: (upscale ->) preprocessing -> frozen base -> head.

    Args:
        base: ``build_vgg16_base(...)``.
        head: a head trained on its features (``build_vgg16_head``).

    Returns:
        A Keras model sharing the layers of ``base`` and ``head``.
    """
    inputs = image_input()
    x = base(vgg16_front(inputs, base.input_shape[1]), training=False)
    return keras.Model(inputs, head(x), name="vgg16_transfer")


def build_vgg16(weights="imagenet", input_size=32):
    """The whole VGG16-transfer model, untrained head included.

    Args:
        weights: "imagenet" (default), a local .h5 file or None: see ``resolve_vgg16_weights``.
        input_size: side in pixels of the images the base sees (default 32).

    Returns:
        ``assemble_vgg16`` of a fresh base and head.
    """
    base = build_vgg16_base(weights, input_size)
    return assemble_vgg16(base, build_vgg16_head(base.output_shape[1:]))


def unfreeze_block5(model):
    """For fine-tuning: make VGG16's block 5 trainable, keep blocks 1-4 frozen.

    Args:
        model: an assembled VGG16 model (``assemble_vgg16``).

    Returns:
        ``model``, changed in place.
    """
    base = next(layer for layer in model.layers if layer.name == "vgg16")
    base.trainable = True
    for layer in base.layers:
        layer.trainable = layer.name.startswith("block5")
    return model


def vgg16_feature_extractor(base):
    """Raw 32x32 images -> the frozen base's features.

    Args:
        base: ``build_vgg16_base(...)``; images are upscaled first if its inputs are larger.

    Returns:
        A Keras model.
    """
    inputs = keras.Input(shape=(32, 32, 3))
    return keras.Model(inputs, base(vgg16_front(inputs, base.input_shape[1]), training=False),
                       name="vgg16_features")


def train_vgg16(data, recipe=VGG16, finetune=None, weights="imagenet", models_dir="models",
                retrain=False, seed=0, strategy=None, verbose=1, augment_on="auto",
                precision="float32"):
    """Frozen VGG16 base run once over train/validation images, head trained on the features,
    then base + head assembled into one model from raw images and saved.

    Args:
        data: a ``data.Dataset``.
        recipe: the head's ``recipes.Recipe`` (default ``recipes.VGG16``). Its
            ``input_size`` > 32 upscales the images inside the model; the cached features
            then take 50,000 x (input_size / 32)^2 x 2 KiB of memory.
        finetune: default None: no fine-tuning; a recipe (e.g. ``recipes.VGG16_FINETUNE``):
            then unfreeze block 5 and train the whole model from images with it.
        weights: "imagenet" (default), a local .h5 file, or None (random weights).
        models_dir: where models, histories and checkpoints go (default "models").
        retrain: default False: an existing saved model is reused (one that sees another
            input size raises ``training.NotTheModelAskedFor``).
        seed: the random seed (default 0).
        strategy: default None: the current strategy.
        verbose: Keras verbosity (default 1).
        augment_on: where fine-tuning's augmentation runs: "auto" (default), "pipeline" or
            "model" (see ``augment_in_model``).
        precision: the Keras dtype policy the base computes the features in and the head
            trains in (default "float32"; ``training.set_up_training`` picks one for the
            machine). The saved model is float32 either way.

    Returns:
        ``(model, history)``.
    """
    check_recipe(recipe)
    precision = resolve_precision(precision)
    if finetune is not None:
        check_recipe(finetune)
    input_size = check_vgg16_input_size(recipe.input_size)
    found = existing("vgg16", models_dir, retrain,
                     check=lambda saved, path: check_vgg16_sees(saved, input_size, path))
    if found:
        return found
    set_seed(seed)
    strategy = strategy or current_strategy()
    # The frozen base computes the features in the training precision too.
    with precision_policy(precision), strategy.scope():
        base = build_vgg16_base(weights, input_size)
        extractor = vgg16_feature_extractor(base)
    train_features = predict_in_batches(extractor, data.x_train, description="VGG16 features (train)")
    val_features = predict_in_batches(extractor, data.x_val, description="VGG16 features (validation)")
    train_ds = feature_pipeline(train_features, data.y_train, recipe.batch_size, shuffle=True, seed=seed)
    val_ds = feature_pipeline(val_features, data.y_val, recipe.batch_size)
    work_dir = vgg16_checkpoints(models_dir, "vgg16", input_size)

    def attempt(path, watch):
        with precision_policy(path.precision), strategy.scope():
            head = build_vgg16_head(train_features.shape[1:])
            return head, fit(head, train_ds, val_ds, recipe, work_dir, verbose,
                             jit_compile=path.jit_compile, callbacks=[watch])

    path = fast_path(None, strategy=strategy, precision=precision)
    head, history = train_with_fallback(attempt, path, "vgg16")
    with strategy.scope():
        model = assemble_vgg16(base, head)
    if finetune is not None:
        history = finetune_vgg16(model, data, history, finetune, models_dir, seed, verbose,
                                 augment_on, strategy)
    finish(model, history, "vgg16", models_dir, work_dir,
           vgg16_checkpoints(models_dir, "vgg16_finetune", input_size))
    return model, history


def check_vgg16_sees(model, input_size, path):
    """``NotTheModelAskedFor`` unless the saved VGG16 ``model`` (from ``path``) sees
    ``input_size`` inputs."""
    nested = {layer.name: layer for layer in model.layers}
    saved_size = nested["vgg16"].input_shape[1] if "vgg16" in nested else input_size
    if saved_size != input_size:
        raise NotTheModelAskedFor(
            f"{path} sees {saved_size}x{saved_size} inputs, "
            f"not the {input_size}x{input_size} asked for: pass --retrain (notebook: "
            f"retrain=True) to train it at the new size.")


def vgg16_checkpoints(models_dir, stage, input_size):
    """The work folder of one VGG16 training stage.

    Args:
        models_dir: the folder of models.
        stage: "vgg16" (the head) or "vgg16_finetune".
        input_size: side in pixels of the images the base sees.

    Returns:
        ``<models_dir>/checkpoints/<stage>``, with ``_<input_size>px`` for sizes other than 32:
        another input size gives other weight shapes, so its checkpoints are kept apart.
    """
    suffix = "" if input_size == 32 else f"_{input_size}px"
    return os.path.join(models_dir, "checkpoints", stage + suffix)


def feature_pipeline(features, labels, batch_size, shuffle=False, seed=0):
    """Batches of cached features and their labels.

    Args:
        features: the base's features, one row per image.
        labels: the images' labels.
        batch_size: rows per batch.
        shuffle: default False; True reshuffles every epoch.
        seed: the shuffling seed (default 0).

    Returns:
        ``inputs.feature_batches``: a prefetching ``tf.data.Dataset`` under TensorFlow, else
        an ``inputs.ArrayBatches``.
    """
    return feature_batches([features, labels], batch_size, shuffle, seed)


def finetune_vgg16(model, data, history, recipe=VGG16_FINETUNE, models_dir="models", seed=0,
                   verbose=1, augment_on="auto", strategy=None):
    """Unfreeze block 5 and train the whole model from images at a low learning rate.

    Args:
        model: the assembled VGG16 model (``assemble_vgg16``), built under ``strategy``.
        data: a ``data.Dataset``.
        history: the head's history, which the fine-tuning's is appended to.
        recipe: a ``recipes.Recipe`` (default ``recipes.VGG16_FINETUNE``).
        models_dir: the folder of models and checkpoints (default "models").
        seed: shuffling and augmentation seed (default 0).
        verbose: Keras verbosity (default 1).
        augment_on: "auto" (default), "pipeline" or "model": see ``augment_in_model``.
        strategy: the strategy that built ``model`` (default None: the current one).

    Returns:
        The history of head and fine-tuning, one after the other.
    """
    unfreeze_block5(model)
    work_dir = vgg16_checkpoints(models_dir, "vgg16_finetune",
                                 model.get_layer("vgg16").input_shape[1])
    _, tuned = fit_on_images(lambda: model, data, recipe, work_dir, seed, augment_on, strategy,
                             verbose)
    return {key: history.get(key, []) + tuned.get(key, []) for key in set(history) | set(tuned)}
