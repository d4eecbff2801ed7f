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


@pytest.fixture
def images():
    return np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)


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
    assert predicted == int(np.argmax(model(images[:1])))
    overlay = visualization.overlay_heatmap(images[0], heatmap, size=64)
    assert overlay.shape == (64, 64, 3) and 0 <= overlay.min() and overlay.max() <= 1


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


def test_figures_are_saved(tmp_path, tiny_cnn, images):
    y = np.arange(6)
    proba = np.asarray(tiny_cnn(images), np.float32)
    names = [f"class_{i}" for i in range(100)]
    paths = [
        visualization.plot_activations(tiny_cnn, images[0], "tiny", tmp_path / "act.png") and tmp_path / "act.png",
        visualization.plot_misclassified(images, y, proba, [0, 1, 2], names, tmp_path / "wrong.png")
        and tmp_path / "wrong.png",
        visualization.plot_reliability({"tiny": evaluation.reliability_bins(y, proba)},
                                       {"tiny": evaluation.expected_calibration_error(y, proba)},
                                       tmp_path / "rel.png") and tmp_path / "rel.png",
        visualization.plot_grad_cam(tiny_cnn, images, y, [0, 1], names, "tiny", tmp_path / "cam.png")
        and tmp_path / "cam.png",
    ]
    points = visualization.embed_2d(visualization.penultimate_features(tiny_cnn, images), method="pca")
    assert points.shape == (6, 2)
    visualization.plot_embedding(points, y // 5, [f"group{i}" for i in range(20)], "tiny", tmp_path / "emb.png")
    for path in paths + [tmp_path / "emb.png"]:
        assert path.stat().st_size > 1000
    matplotlib.pyplot.close("all")
