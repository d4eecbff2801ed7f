"""Figures: training curves (and, for VisualizeModel, a look inside the models)."""

import matplotlib.pyplot as plt
import numpy as np


def save_figure(fig, path):
    """Save ``fig`` as PNG atomically (temporary file, then rename)."""
    from .artifacts import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def _finish(fig, path, tight_layout=True):
    """Lay out ``fig`` (unless already done), save it as PNG when ``path`` is given, return it."""
    if tight_layout:
        fig.tight_layout()
    if path:
        save_figure(fig, path)
    return fig


def plot_history(history, title, path=None):
    """Accuracy and loss, train vs validation, per epoch; saved as PNG when ``path`` is given."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 3.8))
    epochs = range(1, len(history.get("loss", [])) + 1)
    for ax, key, label in ((ax_acc, "accuracy", "Accuracy"), (ax_loss, "loss", "Loss")):
        if history.get(key):
            ax.plot(epochs, history[key], "o-", markersize=3, label="training")
        if history.get(f"val_{key}"):
            ax.plot(epochs, history[f"val_{key}"], "s-", markersize=3, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label.lower())
        ax.set_title(f"{title}: {label.lower()}")
        ax.grid(alpha=0.3)
        ax.legend()
    return _finish(fig, path)


# ---------------------------------------------------------------------------
# TestModels: results, confusion matrices, mistakes, calibration
# ---------------------------------------------------------------------------

def plot_examples(x, y, names, path=None, rows=3, cols=10, seed=0):
    """A grid of random images with their class names."""
    picks = np.random.default_rng(seed).choice(len(x), rows * cols, replace=False)
    fig, axes = plt.subplots(rows, cols, figsize=(1.35 * cols, 1.55 * rows))
    for ax, index in zip(axes.flat, picks):
        ax.imshow(x[index])
        ax.set_title(names[y[index]], fontsize=7)
        ax.axis("off")
    return _finish(fig, path)


def plot_augmented(image, augment, path=None, count=8, title="augmented copies"):
    """The original image followed by ``count`` random augmentations of it."""
    batch = np.repeat(image[None].astype("float32"), count, axis=0)
    augmented = np.asarray(augment(batch, training=True))
    fig, axes = plt.subplots(1, count + 1, figsize=(1.5 * (count + 1), 1.9))
    for ax, picture, label in zip(axes, [image, *augmented], ["original"] + [""] * count):
        ax.imshow(np.clip(picture, 0, 255).astype("uint8"))
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return _finish(fig, path)


def plot_results(rows, path=None):
    """Top-1, top-5 and superclass accuracy per model; the original's reported top-1 as marks."""
    names = [row["model"] for row in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rows)), 4))
    for offset, key, label in ((-0.27, "top1", "top-1"), (0, "top5", "top-5"),
                               (0.27, "superclass_acc", "superclass")):
        bars = ax.bar(x + offset, [row[key] for row in rows], width=0.26, label=label)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    reported = [(i, row["original_reported_top1"]) for i, row in enumerate(rows)
                if row.get("original_reported_top1") is not None]
    if reported:
        ax.scatter([i - 0.27 for i, _ in reported], [v for _, v in reported], marker="_", s=400,
                   color="black", zorder=3, label="original's reported top-1")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test accuracy")
    ax.set_title("Test accuracy per model")
    ax.legend(fontsize=8, ncol=4, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    return _finish(fig, path)


def plot_confusion(matrix, names, title, path=None, block_sizes=None):
    """Row-normalised confusion matrix (recall per true class) with class names.

    ``block_sizes`` (e.g. 5 fine classes per superclass) draws lines between blocks.
    """
    matrix = np.asarray(matrix, dtype=np.float32)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    n = len(names)
    size = 6 if n <= 20 else 17
    fontsize = 8 if n <= 20 else 5.5
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(rates, cmap=plt.colormaps["Blues"], vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), names, fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if block_sizes:
        for edge in np.cumsum(block_sizes)[:-1] - 0.5:
            ax.axhline(edge, color="grey", linewidth=0.4)
            ax.axvline(edge, color="grey", linewidth=0.4)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02, label="fraction of the true class")
    return _finish(fig, path)


def plot_superclass_confusions(matrices, coarse_names, path=None):
    """One row-normalised 20x20 superclass matrix per model, three per row."""
    names = list(matrices)
    cols = min(3, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 6.4 * rows), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes.flat, names)):
        matrix = np.asarray(matrices[name], dtype=np.float32)
        rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        image = ax.imshow(rates, cmap=plt.colormaps["Blues"], vmin=0, vmax=1)
        ax.set_xticks(range(len(coarse_names)), coarse_names, rotation=90, fontsize=7)
        ax.set_yticks(range(len(coarse_names)), coarse_names, fontsize=7)
        ax.set_xlabel("predicted superclass", fontsize=8)
        if i % cols == 0:  # on inner panels it would run into the left neighbour
            ax.set_ylabel("true superclass", fontsize=8)
        ax.set_title(f"{name}: superclass confusion", fontsize=10)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01,
                 label="fraction of the true superclass")
    return _finish(fig, path, tight_layout=False)


def plot_misclassified(x, y_true, proba, indices, names, path=None, cols=4):
    """Wrong predictions: each image with its true label and the top-3 predictions."""
    from .evaluation import top_k_labels

    rows = -(-len(indices) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, indices):
        ax.imshow(x[i], interpolation="nearest")
        top3 = "\n".join(f"{n} {p:.0%}" for n, p in top_k_labels(proba[i], names, 3))
        ax.set_title(f"true: {names[y_true[i]]}\n{top3}", fontsize=8)
    return _finish(fig, path)


def reliability_panel(ax, bins, title, legend=False):
    """One reliability diagram on ``ax``: accuracy per confidence bin (bars), mean confidence
    of each bin (dots) and the diagonal of perfect calibration.

    Args:
        ax: a Matplotlib axis.
        bins: ``(mean_confidence, accuracy, counts)`` from ``evaluation.reliability_bins``.
        title: the panel's title.
        legend: draw the legend on this panel.
    """
    mean_confidence, accuracy, counts = bins
    n_bins = len(counts)
    centres = (np.arange(n_bins) + 0.5) / n_bins
    used = counts > 0
    ax.bar(centres[used], accuracy[used], width=1 / n_bins, edgecolor="black",
           linewidth=0.4, label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot(centres[used], mean_confidence[used], "o", color="crimson", markersize=3,
            label="mean confidence of the bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    if legend:
        ax.legend(fontsize=7, loc="upper left")


def plot_reliability(bins_by_model, ece_by_model, path=None):
    """Reliability diagram per model: accuracy vs mean confidence per bin, plus ECE."""
    names = list(bins_by_model)
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.6), squeeze=False)
    for i, (ax, name) in enumerate(zip(axes[0], names)):
        reliability_panel(ax, bins_by_model[name], f"{name}: ECE {ece_by_model[name]:.3f}", legend=i == 0)
    return _finish(fig, path)


def plot_calibration(results, path=None):
    """Per model (one column each), the test reliability diagram before temperature scaling
    (top row) and after it (bottom row), with the ECE and the fitted temperature.

    Args:
        results: ``calibration.Calibration`` objects.
        path: where to save the PNG (optional).
    """
    fig, axes = plt.subplots(2, len(results), figsize=(3.4 * len(results), 7.0), squeeze=False)
    for i, result in enumerate(results):
        reliability_panel(axes[0][i], result.bins_before,
                          f"{result.model}: before, ECE {result.ece_before:.3f}", legend=i == 0)
        reliability_panel(axes[1][i], result.bins_after,
                          f"{result.model}: T = {result.temperature:.2f}, ECE {result.ece_after:.3f}")
    fig.suptitle("Test-set reliability before (top) and after (bottom) temperature scaling "
                 "fitted on the validation split", fontsize=10)
    return _finish(fig, path)


def plot_robustness(results, path=None):
    """Accuracy against corruption severity, one panel per model and one line per
    corruption, with the clean accuracy and the mean corruption accuracy as level lines.

    Args:
        results: ``robustness.Robustness`` objects.
        path: where to save the PNG (optional).
    """
    cols = 2 if len(results) == 4 else min(3, len(results))
    rows = -(-len(results) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False,
                             sharey=True)
    colours = plt.colormaps["tab10"]
    top = min(1.0, 1.1 * max(max(r.clean, float(r.accuracy.max())) for r in results))
    for ax, result in zip(axes.flat, results):
        severities = np.arange(1, result.accuracy.shape[1] + 1)
        for i, (name, values) in enumerate(zip(result.corruptions, result.accuracy)):
            ax.plot(severities, values, "o-", markersize=3, color=colours(i % 10),
                    label=name.replace("_", " "))
        ax.axhline(result.clean, color="black", linestyle="--", linewidth=1, label="clean")
        ax.axhline(result.mean_corruption_accuracy, color="black", linestyle=":", linewidth=1,
                   label="mean over corruptions")
        ax.set_title(f"{result.model}: clean {result.clean:.3f}, corrupted "
                     f"{result.mean_corruption_accuracy:.3f} (drop {result.drop:.3f})", fontsize=9)
        ax.set_xticks(severities)
        ax.set_xlabel("severity")
        ax.set_ylim(0, top)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")
    spare = list(axes.flat)[len(results):]
    for ax in spare:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.tight_layout()
    if spare:  # the legend takes the first empty panel
        spare[0].legend(handles, labels, loc="center", fontsize=9, frameon=False)
    else:
        fig.legend(handles, labels, loc="upper center", ncol=5, fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, 0.0))
    return _finish(fig, path, tight_layout=False)


def plot_corruptions(image, path=None, seed=0):
    """One image under every corruption of ``robustness`` (rows) at severities 1-5 (columns)."""
    from .robustness import CORRUPTIONS, SEVERITIES, corrupt

    fig, axes = plt.subplots(len(CORRUPTIONS), len(SEVERITIES) + 1,
                             figsize=(1.3 * (len(SEVERITIES) + 1) + 1.0, 1.35 * len(CORRUPTIONS)))
    for row, name in zip(axes, CORRUPTIONS):
        views = [image] + [corrupt(image[None], name, s, seed)[0] for s in SEVERITIES]
        for ax, view in zip(row, views):
            ax.imshow(view, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(name.replace("_", " "), fontsize=8)
    for ax, title in zip(axes[0], ["clean"] + [f"severity {s}" for s in SEVERITIES]):
        ax.set_title(title, fontsize=8)
    return _finish(fig, path)


def plot_predictions(images, tops, titles, path=None):
    """Each image beside a bar chart of its top classes and their probabilities.

    Args:
        images: the 32x32 images the model saw (uint8).
        tops: per image, ``[(class name, probability), ...]`` (``predict.top_classes``).
        titles: a title per image (e.g. its file name).
        path: where to save the PNG (optional).
    """
    count = len(images)
    fig, axes = plt.subplots(count, 2, figsize=(6.4, 1.7 * count), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 2.6]})
    for (ax_image, ax_bars), image, top, title in zip(axes, images, tops, titles):
        ax_image.imshow(image, interpolation="nearest")
        ax_image.set_title(title, fontsize=8)
        ax_image.axis("off")
        names = [name for name, _ in top][::-1]
        values = [p for _, p in top][::-1]
        ax_bars.barh(names, values, color="steelblue")
        ax_bars.set_xlim(0, 1)
        ax_bars.tick_params(labelsize=8)
        for y, value in enumerate(values):
            inside = value > 0.8  # a long bar carries its label inside, in white
            ax_bars.text(value - 0.02 if inside else value + 0.02, y, f"{value:.0%}", va="center",
                         ha="right" if inside else "left", color="white" if inside else "black",
                         fontsize=7)
    axes[-1][1].set_xlabel("probability")
    return _finish(fig, path)


# ---------------------------------------------------------------------------
# VisualizeModel: activations, filter patterns, Grad-CAM, embeddings
# ---------------------------------------------------------------------------

def feature_layers(model, kinds=("Conv2D", "MaxPooling2D")):
    """Names of the top-level layers of the given kinds, in order."""
    return [layer.name for layer in model.layers if type(layer).__name__ in kinds]


def activation_model(model, layer_names):
    """A model from the images to the outputs of ``layer_names`` (top-level layers)."""
    import keras

    return keras.Model(model.input, [model.get_layer(n).output for n in layer_names])


def activation_grid(feature_map, cols=16, fill=0.0):
    """Tile the channels of one (H, W, C) feature map into a grid, each channel scaled to [0, 1].

    Channels are standardised then clipped to +-2 std; a constant channel (std 0) becomes 0,
    never NaN.

    Args:
        feature_map: array of shape (H, W, C).
        cols: channels per grid row (default 16).
        fill: value of the 1-pixel separators and of the cells no channel fills (default 0;
            NaN leaves them blank in a plot).
    """
    fmap = np.asarray(feature_map, dtype=np.float32)
    h, w, channels = fmap.shape
    mean = fmap.mean(axis=(0, 1), keepdims=True)
    std = fmap.std(axis=(0, 1), keepdims=True)
    scaled = np.where(std > 1e-6, (fmap - mean) / np.maximum(std, 1e-6), 0.0)
    scaled = np.clip(scaled / 4 + 0.5, 0, 1)
    scaled[:, :, std.ravel() <= 1e-6] = 0.0
    cols = min(cols, channels)
    rows = -(-channels // cols)
    grid = np.full((rows * (h + 1) - 1, cols * (w + 1) - 1), fill, dtype=np.float32)
    for c in range(channels):
        r, k = divmod(c, cols)
        grid[r * (h + 1):r * (h + 1) + h, k * (w + 1):k * (w + 1) + w] = scaled[:, :, c]
    return grid


def plot_activations(model, image, title, path=None, max_channels=64, cols=16):
    """The channel grids of every conv and pooling layer of ``model`` for one image."""
    names = feature_layers(model)
    import keras

    outputs = activation_model(model, names)(image[None], training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    outputs = [keras.ops.convert_to_numpy(output) for output in outputs]
    fig, axes = plt.subplots(len(names) + 1, 1, figsize=(12, 1.0 + 2.2 * len(names)),
                             gridspec_kw={"height_ratios": [1.5] + [1] * len(names)})
    axes[0].imshow(image, interpolation="nearest")
    axes[0].set_title(f"{title}: input image", fontsize=10)
    axes[0].axis("off")
    for ax, name, output in zip(axes[1:], names, outputs):
        fmap = np.asarray(output[0])
        grid = activation_grid(fmap[..., :max_channels], cols=cols, fill=np.nan)
        cmap = plt.colormaps["viridis"].with_extremes(bad="white")  # blank separators, empty cells
        ax.imshow(grid, cmap=cmap, aspect="equal", interpolation="nearest")
        shown = min(max_channels, fmap.shape[-1])
        ax.set_title(f"{name}: {fmap.shape[0]}x{fmap.shape[1]}, {shown} of {fmap.shape[-1]} channels",
                     fontsize=9)
        ax.axis("off")
    return _finish(fig, path)


def feature_extractor(model, layer_name):
    """A model from raw images to the output of ``layer_name``, which may sit in a nested
    sub-model (VGG16's base); the top level must then be a chain of layers."""
    import keras

    if any(layer.name == layer_name for layer in model.layers):
        return keras.Model(model.input, model.get_layer(layer_name).output)
    inputs = keras.Input(shape=model.input_shape[1:])
    x = inputs
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        if hasattr(layer, "layers") and any(l.name == layer_name for l in layer.layers):
            return keras.Model(inputs, keras.Model(layer.input, layer.get_layer(layer_name).output)(x))
        x = layer(x)
    raise ValueError(f"no layer {layer_name!r} in {model.name}")


def input_gradient(fn):
    """``fn``, a scalar function of one float32 array built from Keras calls and ``keras.ops``,
    as a function ``x -> (value, d value / d x)`` of NumPy arrays, on the running backend:
    ``tf.GradientTape`` on TensorFlow, ``jax.value_and_grad`` (compiled once) on JAX, autograd
    on PyTorch. The model's weights are constants here; only the input is differentiated."""
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        def tensorflow_gradient(x):
            x = tf.convert_to_tensor(np.asarray(x, np.float32))
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = fn(x)
            return float(value), tape.gradient(value, x).numpy()
        return tensorflow_gradient
    if backend == "jax":
        import jax

        compiled = jax.jit(jax.value_and_grad(fn))

        def jax_gradient(x):
            value, grad = compiled(jax.numpy.asarray(x, jax.numpy.float32))
            return float(value), np.asarray(grad)
        return jax_gradient
    if backend == "torch":
        def torch_gradient(x):
            x = keras.ops.convert_to_tensor(np.asarray(x, np.float32)).detach().requires_grad_(True)
            value = fn(x)
            value.backward()
            return float(value.detach().cpu()), x.grad.detach().cpu().numpy()
        return torch_gradient
    raise NotImplementedError(f"gradients need the TensorFlow, JAX or PyTorch backend, not {backend!r}: "
                              "set KERAS_BACKEND to one of them")


def filter_pattern(extractor, filter_index, steps=30, learning_rate=10.0, size=32, seed=0):
    """Gradient ascent on an input image (0-255 scale) to maximise one filter's mean activation.

    Returns a float32 (size, size, 3) image in [0, 1].
    """
    import keras

    def mean_activation(image):
        return keras.ops.mean(keras.ops.cast(extractor(image, training=False)[..., filter_index], "float32"))

    gradient = input_gradient(mean_activation)
    image = np.random.default_rng(seed).uniform(112, 144, (1, size, size, 3)).astype(np.float32)
    for _ in range(steps):
        _, grads = gradient(image)
        grads = grads / (np.sqrt(np.mean(np.square(grads))) + 1e-8)
        image = np.clip(image + learning_rate * grads, 0.0, 255.0).astype(np.float32)
    return deprocess(image[0])


def deprocess(image):
    """Centre, scale to 0.15 std, clip to [0, 1]: a viewable version of an optimised image."""
    image = np.asarray(image, dtype=np.float32)
    image = image - image.mean()
    image = image / (image.std() + 1e-5) * 0.15 + 0.5
    return np.clip(image, 0, 1)


def plot_filter_patterns(model, layer_names, title, path=None, n_filters=8, steps=30):
    """For each layer, the input patterns that most excite its first ``n_filters`` filters."""
    from tqdm.auto import tqdm

    fig, axes = plt.subplots(len(layer_names), n_filters,
                             figsize=(1.3 * n_filters, 1.45 * len(layer_names) + 0.4), squeeze=False)
    with tqdm(total=len(layer_names) * n_filters, desc=f"filter patterns {title}") as bar:
        for row, name in zip(axes, layer_names):
            extractor = feature_extractor(model, name)
            for index, ax in enumerate(row):
                ax.imshow(filter_pattern(extractor, index, steps=steps, seed=index))
                ax.set_xticks([])
                ax.set_yticks([])
                bar.update(1)
            row[0].set_ylabel(name, fontsize=8)
    fig.suptitle(f"{title}: input patterns that maximise each filter", fontsize=10)
    return _finish(fig, path)


def last_feature_map_layer(model):
    """The name of the last top-level layer (or nested sub-model) with a 4-D output."""
    for layer in reversed(model.layers):
        shape = layer.output.shape
        if len(shape) == 4 and type(layer).__name__ != "InputLayer":
            if hasattr(layer, "layers"):
                return [l.name for l in layer.layers if len(l.output.shape) == 4][-1]
            return layer.name
    raise ValueError(f"{model.name} has no 4-D feature maps")


def grad_cam(model, image, class_index=None, layer_name=None):
    """Grad-CAM heatmap of ``class_index`` (default: predicted class) for one image.

    Returns ``(heatmap, class_index)``; the heatmap has the feature map's height and width
    and values in [0, 1] (all zeros when no location supports the class).
    """
    import keras

    layer_name = layer_name or last_feature_map_layer(model)
    features = feature_extractor(model, layer_name)
    # The rest of the network, from that feature map to the predictions.
    inner = keras.Input(shape=features.output_shape[1:])
    x, start = inner, False
    for layer in _chain(model):
        if start:
            x = layer(x)
        start = start or layer.name == layer_name
    head = keras.Model(inner, x)
    batch = np.asarray(image, dtype=np.float32)[None]
    fmap = keras.ops.convert_to_numpy(features(batch, training=False)).astype(np.float32)
    if class_index is None:
        class_index = int(np.argmax(keras.ops.convert_to_numpy(head(fmap, training=False))[0]))
    _, grads = input_gradient(lambda f: head(f, training=False)[0, class_index])(fmap)
    weights = grads[0].mean(axis=(0, 1))
    cam = np.maximum((fmap[0] * weights).sum(axis=-1), 0)
    peak = cam.max()
    return (cam / peak if peak > 0 else np.zeros_like(cam)).astype(np.float32), class_index


def _chain(model):
    """The layers from input to output, nested sub-models flattened (top level must be a chain)."""
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        if hasattr(layer, "layers"):
            yield from _chain(layer)
        else:
            yield layer


def overlay_heatmap(image, heatmap, size=128, alpha=0.45):
    """The image upscaled to ``size`` pixels with the heatmap (jet colours) blended on top."""
    import keras

    resize = keras.ops.image.resize
    big = resize(np.asarray(image, np.float32)[None] / 255.0, (size, size), interpolation="bicubic")
    heat = resize(np.asarray(heatmap, np.float32)[None, :, :, None], (size, size), interpolation="bilinear")
    big, heat = keras.ops.convert_to_numpy(big)[0], keras.ops.convert_to_numpy(heat)[0, :, :, 0]
    colours = plt.colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
    return np.clip((1 - alpha) * np.clip(big, 0, 1) + alpha * colours, 0, 1).astype(np.float32)


def plot_grad_cam(model, x, y_true, indices, names, title, path=None, layer_name=None):
    """Per image: the upscaled image and its Grad-CAM overlay for the predicted class."""
    fig, axes = plt.subplots(2, len(indices), figsize=(2.1 * len(indices), 5.4), squeeze=False)
    for column, i in enumerate(indices):
        heatmap, predicted = grad_cam(model, x[i], layer_name=layer_name)
        right = predicted == y_true[i]
        axes[0, column].imshow(overlay_heatmap(x[i], np.zeros_like(heatmap), alpha=0))
        axes[0, column].set_title(f"#{i} true:\n{names[y_true[i]]}", fontsize=8)
        axes[1, column].imshow(overlay_heatmap(x[i], heatmap))
        axes[1, column].set_xlabel(f"predicted ({'right' if right else 'wrong'}):\n{names[predicted]}",
                                   fontsize=8, color="green" if right else "crimson")
        for ax in axes[:, column]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{title}: Grad-CAM of the predicted class ({layer_name or last_feature_map_layer(model)})",
                 fontsize=10)
    return _finish(fig, path)


def penultimate_features(model, x, batch_size=250):
    """The input to the final classifier layer, flattened: (N, features) float32."""
    import keras

    from .inference import predict_in_batches

    classifier = model.layers[-1]
    extractor = keras.Model(model.input, classifier.input)
    features = predict_in_batches(extractor, x, batch_size, description=f"features {model.name}")
    return features.reshape(len(x), -1).astype(np.float32)


def embed_2d(features, method="tsne", seed=0):
    """2-D embedding: PCA, or t-SNE after PCA to 50 dimensions (scikit-learn)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    features = np.asarray(features, dtype=np.float32)
    if method == "pca":
        return PCA(2, random_state=seed).fit_transform(features)
    if method != "tsne":
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    reduced = PCA(min(50, *features.shape), random_state=seed).fit_transform(features)
    perplexity = min(30.0, (len(features) - 1) / 3)
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)


def plot_embedding(points, coarse_labels, coarse_names, title, path=None):
    """Scatter of 2-D points coloured by superclass, with a legend of superclass names."""
    fig, ax = plt.subplots(figsize=(10, 7))
    colours = plt.colormaps["tab20"]
    for c, name in enumerate(coarse_names):
        chosen = np.asarray(coarse_labels) == c
        if chosen.any():
            ax.scatter(points[chosen, 0], points[chosen, 1], s=8, color=colours(c % 20), label=name)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _finish(fig, path)
