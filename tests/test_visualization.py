"""Figures and the techniques behind them: activation grids, Grad-CAM, filter patterns."""

import keras
import matplotlib
import numpy as np
import pytest
from keras import layers

matplotlib.use("Agg")

from cifar100cnn import evaluation, visualization  # noqa: E402


@pytest.fixture(scope="module")
def tiny_cnn():
    inputs = keras.Input((32, 32, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(4, 3, activation="relu", name="conv_a")(x)
    x = layers.MaxPooling2D(2, name="pool_a")(x)
    x = layers.Conv2D(6, 3, activation="relu", name="conv_b")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(100, activation="softmax")(x))


@pytest.fixture(scope="module")
def tiny_nested():
    """The shape of our VGG16 model: preprocessing layer, nested base, nested head."""
    base_in = keras.Input((32, 32, 3))
    y = layers.Conv2D(4, 3, padding="same", activation="relu", name="block1_conv1")(base_in)
    y = layers.MaxPooling2D(4, name="block1_pool")(y)
    base = keras.Model(base_in, y, name="vgg16")
    head_in = keras.Input((8, 8, 4))
    head = keras.Model(head_in, layers.Dense(100, activation="softmax")(layers.Flatten()(head_in)),
                       name="vgg16_head")
    inputs = keras.Input((32, 32, 3))
    x = layers.Conv2D(3, 1, name="vgg16_preprocess")(inputs)
    return keras.Model(inputs, head(base(x)), name="vgg16_transfer")


def test_activation_grid_constant_channels_give_no_nan():
    fmap = np.zeros((5, 5, 3), np.float32)
    fmap[..., 1] = 7.0                                   # constant, non-zero
    fmap[..., 2] = np.arange(25).reshape(5, 5)            # varying
    grid = visualization.activation_grid(fmap, cols=3)
    assert grid.shape == (5, 3 * 6 - 1)
    assert np.isfinite(grid).all() and grid.min() >= 0 and grid.max() <= 1
    assert np.all(grid[:, :5] == 0) and np.all(grid[:, 6:11] == 0)
    varying = grid[:, 12:17]
    assert varying.min() < 0.3 and varying.max() > 0.7


def test_activation_grid_layout_rows():
    grid = visualization.activation_grid(np.random.rand(4, 4, 10).astype(np.float32), cols=4)
    assert grid.shape == (3 * 5 - 1, 4 * 5 - 1)


@pytest.mark.parametrize("fixture, layer", [("tiny_cnn", None), ("tiny_cnn", "pool_a"),
                                            ("tiny_nested", None), ("tiny_nested", "block1_conv1")])
def test_grad_cam_shape_and_range(request, images, fixture, layer):
    model = request.getfixturevalue(fixture)
    heatmap, predicted = visualization.grad_cam(model, images[0], layer_name=layer)
    expected = visualization.feature_extractor(model, layer or visualization.last_feature_map_layer(model))
    assert heatmap.shape == tuple(expected.output_shape[1:3])
    assert heatmap.dtype == np.float32 and np.isfinite(heatmap).all()
    assert heatmap.min() >= 0 and heatmap.max() <= 1
    assert predicted == int(np.argmax(keras.ops.convert_to_numpy(model(images[:1]))))
    overlay = visualization.overlay_heatmap(images[0], heatmap, size=64)
    assert overlay.shape == (64, 64, 3) and 0 <= overlay.min() and overlay.max() <= 1


def _red_versus_green_model():
    """A model whose right Grad-CAM maps are known. A 1x1 ReLU convolution ("features")
    copies the red and green planes (0-1) into two feature maps; after global average pooling,
    class 0's logit is 5 x (red - green), class 1's is 5 x (green - red), all others are 0.
    So for class 0 red pixels count for and green ones against; for class 1 the reverse."""
    inputs = keras.Input((32, 32, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(2, 1, use_bias=False, activation="relu", name="features")(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(100, activation="softmax", name="scores")(x))
    copy_red_green = np.zeros((1, 1, 3, 2), np.float32)
    copy_red_green[0, 0, 0, 0] = copy_red_green[0, 0, 1, 1] = 1
    model.get_layer("features").set_weights([copy_red_green])
    scores = np.zeros((2, 100), np.float32)
    scores[:, 0], scores[:, 1] = (5, -5), (-5, 5)
    model.get_layer("scores").set_weights([scores, np.zeros(100, np.float32)])
    return model


def test_grad_cam_lights_up_the_pixels_that_support_the_class():
    model = _red_versus_green_model()
    image = np.zeros((32, 32, 3), np.uint8)
    image[..., 1] = 255                      # green everywhere ...
    image[4:12, 20:28] = (255, 0, 0)         # ... but a red square
    square = np.zeros((32, 32), np.float32)
    square[4:12, 20:28] = 1
    heatmap, predicted = visualization.grad_cam(model, image, class_index=0)
    assert predicted == 0
    np.testing.assert_allclose(heatmap, square, atol=1e-5)       # red supports class 0
    heatmap, _ = visualization.grad_cam(model, image, class_index=1)
    np.testing.assert_allclose(heatmap, 1 - square, atol=1e-5)   # green supports class 1
    _, predicted = visualization.grad_cam(model, image)          # default: the predicted class
    assert predicted == 1  # more green than red


def test_grad_cam_of_a_class_without_support_is_zero(tiny_cnn):
    # A black image gives all-zero ReLU features: the heatmap must be zeros, not NaN.
    heatmap, _ = visualization.grad_cam(tiny_cnn, np.zeros((32, 32, 3), np.uint8), class_index=3)
    assert np.all(heatmap == 0)


def test_feature_extractor_reaches_nested_layers(tiny_nested, images):
    extractor = visualization.feature_extractor(tiny_nested, "block1_conv1")
    assert extractor(images[:2]).shape == (2, 32, 32, 4)


def test_filter_pattern_is_an_image_in_unit_range(tiny_nested):
    extractor = visualization.feature_extractor(tiny_nested, "block1_conv1")
    pattern = visualization.filter_pattern(extractor, 0, steps=3)
    assert pattern.shape == (32, 32, 3) and pattern.dtype == np.float32
    assert np.isfinite(pattern).all() and pattern.min() >= 0 and pattern.max() <= 1


NAMES = [f"class_{i}" for i in range(100)]


def shown_image(ax):
    return np.asarray(ax.images[0].get_array())


def assert_png_of(path, fig):
    """``path`` holds a PNG of ``fig``: it decodes, and is not blank."""
    import matplotlib.image

    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and pixels.shape[2] in (3, 4) and pixels[..., :3].std() > 0
    # bbox_inches="tight" trims the margins only: the picture keeps about the figure's shape.
    width, height = fig.get_size_inches()
    assert pixels.shape[1] / pixels.shape[0] == pytest.approx(width / height, rel=0.35)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    matplotlib.pyplot.close("all")


def test_history_figure_plots_each_curve_per_epoch(tmp_path):
    history = {"accuracy": [0.1, 0.2, 0.3], "val_accuracy": [0.15, 0.18, 0.2],
               "loss": [4.0, 3.5, 3.2], "val_loss": [3.9, 3.7, 3.6]}
    fig = visualization.plot_history(history, "baseline", tmp_path / "history.png")
    accuracy, loss = fig.axes
    assert [accuracy.get_title(), loss.get_title()] == ["baseline: accuracy", "baseline: loss"]
    for ax, key in ((accuracy, "accuracy"), (loss, "loss")):
        training, validation = ax.get_lines()
        assert list(training.get_xdata()) == [1, 2, 3]
        assert list(training.get_ydata()) == history[key]
        assert list(validation.get_ydata()) == history[f"val_{key}"]
        assert [text.get_text() for text in ax.get_legend().get_texts()] == ["training", "validation"]
    assert_png_of(tmp_path / "history.png", fig)


def test_activation_figure_shows_the_image_and_each_layers_channels(tmp_path, tiny_cnn, images):
    fig = visualization.plot_activations(tiny_cnn, images[0], "tiny", tmp_path / "act.png")
    assert fig.axes[0].get_title() == "tiny: input image"
    np.testing.assert_array_equal(shown_image(fig.axes[0]), images[0])
    layers_shown = visualization.feature_layers(tiny_cnn)
    assert layers_shown == ["conv_a", "pool_a", "conv_b"] and len(fig.axes) == 4
    outputs = visualization.activation_model(tiny_cnn, layers_shown)(images[:1])
    for ax, name, output in zip(fig.axes[1:], layers_shown, outputs):
        fmap = keras.ops.convert_to_numpy(output)[0]
        channels = fmap.shape[-1]
        assert ax.get_title() == f"{name}: {fmap.shape[0]}x{fmap.shape[1]}, {channels} of {channels} channels"
        np.testing.assert_allclose(shown_image(ax), visualization.activation_grid(fmap, fill=np.nan),
                                   atol=1e-6)
        assert ax.images[0].get_cmap().get_bad()[3] > 0  # separators drawn as blank, not as 0
    assert_png_of(tmp_path / "act.png", fig)


def test_activation_grid_fills_separators_and_empty_cells_with_fill():
    grid = visualization.activation_grid(np.random.rand(4, 4, 5).astype(np.float32), cols=4,
                                         fill=np.nan)
    assert np.isnan(grid[4, :]).all() and np.isnan(grid[:, 4]).all()   # separators
    assert np.isnan(grid[5:, 5:]).all()                                # cells 6-8 of row 2: empty
    assert np.isfinite(grid[5:, :4]).all()                             # channel 5


def test_misclassified_figure_shows_each_image_with_its_labels(tmp_path, images):
    proba = np.full((6, 100), 0.001, np.float32)
    proba[np.arange(6), [5, 6, 7, 8, 9, 10]] = 0.5
    proba[np.arange(6), [11, 12, 13, 14, 15, 16]] = 0.3
    fig = visualization.plot_misclassified(images, np.arange(6), proba, [1, 4], NAMES,
                                           tmp_path / "wrong.png", cols=2)
    first, second = fig.axes
    np.testing.assert_array_equal(shown_image(first), images[1])
    np.testing.assert_array_equal(shown_image(second), images[4])
    assert first.get_title().splitlines()[:3] == ["true: class_1", "class_6 50%", "class_12 30%"]
    assert second.get_title().splitlines()[:3] == ["true: class_4", "class_9 50%", "class_15 30%"]
    assert_png_of(tmp_path / "wrong.png", fig)


def test_reliability_figure_shows_accuracy_and_confidence_per_bin(tmp_path):
    proba = np.full((4, 100), 0.0, np.float32)
    proba[:, 0] = [0.95, 0.95, 0.65, 0.65]
    proba[:, 1] = 1 - proba[:, 0]
    y = np.array([0, 1, 0, 0])  # bin (0.9, 1]: half right; bin (0.6, 0.7]: all right
    bins = evaluation.reliability_bins(y, proba, n_bins=10)
    fig = visualization.plot_reliability({"tiny": bins}, {"tiny": 0.4}, tmp_path / "rel.png")
    (ax,) = fig.axes
    assert ax.get_title() == "tiny: ECE 0.400"
    heights = sorted((round(bar.get_x() + bar.get_width() / 2, 3), bar.get_height())
                     for bar in ax.patches)
    assert heights == [(0.65, 1.0), (0.95, 0.5)]
    dots = [line for line in ax.get_lines() if line.get_marker() == "o"][0]
    np.testing.assert_allclose(dots.get_ydata(), [0.65, 0.95], atol=1e-6)
    assert_png_of(tmp_path / "rel.png", fig)


def test_grad_cam_figure_overlays_each_images_heatmap(tmp_path, tiny_cnn, images):
    y = np.arange(6)
    fig = visualization.plot_grad_cam(tiny_cnn, images, y, [0, 3], NAMES, "tiny", tmp_path / "cam.png")
    assert len(fig.axes) == 4  # two images, each above its overlay
    top, bottom = fig.axes[:2], fig.axes[2:]  # subplots are stored row by row
    for column, index in enumerate([0, 3]):
        heatmap, predicted = visualization.grad_cam(tiny_cnn, images[index])
        assert top[column].get_title() == f"#{index} true:\n{NAMES[index]}"
        np.testing.assert_allclose(shown_image(bottom[column]),
                                   visualization.overlay_heatmap(images[index], heatmap), atol=1e-5)
        assert NAMES[predicted] in bottom[column].get_xlabel()
    assert "Grad-CAM of the predicted class (conv_b)" in fig._suptitle.get_text()
    assert_png_of(tmp_path / "cam.png", fig)


def test_embedding_figure_places_each_point_in_its_group(tmp_path, tiny_cnn, images):
    points = visualization.embed_2d(visualization.penultimate_features(tiny_cnn, images), method="pca")
    assert points.shape == (6, 2)
    groups = np.array([0, 0, 1, 1, 1, 3])
    fig = visualization.plot_embedding(points, groups, [f"group{i}" for i in range(20)], "tiny",
                                       tmp_path / "emb.png")
    (ax,) = fig.axes
    assert ax.get_title() == "tiny"
    shown = {text.get_text(): collection.get_offsets()
             for text, collection in zip(ax.get_legend().get_texts(), ax.collections)}
    assert list(shown) == ["group0", "group1", "group3"]  # empty groups get no legend entry
    for group, offsets in shown.items():
        np.testing.assert_allclose(offsets, points[groups == int(group[5:])], atol=1e-5)
    assert_png_of(tmp_path / "emb.png", fig)


def test_superclass_confusions_one_panel_per_model_normalised_by_row(tmp_path):
    coarse = [f"super{i}" for i in range(4)]
    matrices = {name: np.diag([2.0, 4.0, 6.0, 8.0]) + k for k, name in enumerate("abcd")}
    fig = visualization.plot_superclass_confusions(matrices, coarse, tmp_path / "sc.png")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [f"{n}: superclass confusion" for n in "abcd"]
    expected = matrices["b"] / matrices["b"].sum(axis=1, keepdims=True)
    np.testing.assert_allclose(shown_image(panels[1]), expected, rtol=1e-6)
    # three per row: the y label only on the first column, where it has room
    assert [ax.get_ylabel() for ax in panels] == ["true superclass", "", "", "true superclass"]
    assert_png_of(tmp_path / "sc.png", fig)
