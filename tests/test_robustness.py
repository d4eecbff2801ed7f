"""Corruptions in the manner of CIFAR-100-C, their bookkeeping, the
CIFAR-100-C reader and the figures. Images are made here; no dataset is needed."""

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from cifar100cnn import robustness, visualization  # noqa: E402


@pytest.fixture(scope="module")
def textured():
    """40 smooth random colour images (like photos: neighbouring pixels alike)."""
    from scipy.ndimage import zoom

    rng = np.random.default_rng(1)
    coarse = rng.uniform(20, 235, (40, 8, 8, 3))
    return np.clip(zoom(coarse, (1, 4, 4, 1), order=1), 0, 255).astype(np.uint8)


def test_the_seven_corruptions_and_the_benchmark_parameters():
    assert robustness.CORRUPTIONS == ("gaussian_noise", "gaussian_blur", "defocus_blur", "contrast",
                                      "brightness", "jpeg_compression", "pixelate")
    assert robustness.SEVERITY_PARAMETERS["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert robustness.SEVERITY_PARAMETERS["jpeg_compression"] == (80, 65, 58, 50, 40)
    assert all(len(values) == 5 for values in robustness.SEVERITY_PARAMETERS.values())


@pytest.mark.parametrize("corruption", robustness.CORRUPTIONS)
def test_every_corruption_keeps_shape_and_type_and_grows_with_severity(textured, corruption):
    change = []
    for severity in (1, 3, 5):
        out = robustness.corrupt(textured, corruption, severity)
        assert out.dtype == np.uint8 and out.shape == textured.shape
        change.append(np.abs(out.astype(float) - textured).mean())
    assert 0 < change[0] < change[1] < change[2], change


@pytest.mark.parametrize("corruption", [c for c in robustness.CORRUPTIONS if c != "gaussian_noise"])
def test_each_image_is_corrupted_on_its_own(textured, corruption):
    batch = robustness.corrupt(textured[:5], corruption, 5)
    for k in range(5):
        assert np.array_equal(batch[k], robustness.corrupt(textured[k:k + 1], corruption, 5)[0])


def test_gaussian_noise_has_the_benchmark_spread_and_is_reproducible():
    grey = np.full((20, 32, 32, 3), 128, np.uint8)
    for severity, std in ((1, 0.04), (5, 0.10)):
        out = robustness.corrupt(grey, "gaussian_noise", severity, seed=3)
        assert np.std(out.astype(float) - 128) == pytest.approx(std * 255, rel=0.03)
    assert not np.array_equal(out[0], out[1])  # fresh noise for every image
    again = robustness.corrupt(grey, "gaussian_noise", 2, seed=3)
    assert np.array_equal(again, robustness.corrupt(grey, "gaussian_noise", 2, seed=3))
    assert not np.array_equal(again, robustness.corrupt(grey, "gaussian_noise", 2, seed=4))


def test_gaussian_blur_spreads_an_impulse_by_the_benchmark_sigma():
    impulse = np.zeros((1, 32, 32, 3), np.uint8)
    impulse[0, 16, 16] = 255
    for severity, sigma in ((1, 0.4), (5, 1.0)):
        reach = int(4 * sigma + 0.5)  # scipy's (and skimage's) truncation at 4 sigma
        taps = np.exp(-np.arange(-reach, reach + 1) ** 2 / (2 * sigma ** 2))
        centre = 255 * (1 / taps.sum()) ** 2
        out = robustness.corrupt(impulse, "gaussian_blur", severity)
        assert out[0, 16, 16, 0] == pytest.approx(centre, abs=0.6)


def test_defocus_kernel_is_the_benchmark_disk():
    # Radius 1.5: the disk covers the 3x3 square; a blur of sigma 0.1 barely touches it.
    np.testing.assert_allclose(robustness.disk_kernel(1.5, 0.1), np.full((3, 3), 1 / 9), atol=1e-6)
    # Radius 0.3: only the centre pixel, then the 3x3 Gaussian of sigma 0.4.
    taps = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * 0.4 ** 2))
    kernel = robustness.disk_kernel(0.3, 0.4)
    np.testing.assert_allclose(kernel, np.outer(taps, taps) / taps.sum() ** 2, atol=1e-9)
    # Radius 1: the centre and its four neighbours, 1/5 each (sigma 0.2 leaves them sharp).
    plus = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]]) / 5
    np.testing.assert_allclose(robustness.disk_kernel(1.0, 0.2)[1:4, 1:4], plus, atol=1e-4)
    for radius, sigma in robustness.SEVERITY_PARAMETERS["defocus_blur"]:
        kernel = robustness.disk_kernel(radius, sigma)
        assert kernel.sum() == pytest.approx(1.0) and np.allclose(kernel, kernel.T)


def test_contrast_scales_the_distance_to_each_image_mean(textured):
    out = robustness.corrupt(textured, "contrast", 4).astype(float)
    mean = textured.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(out - mean, 0.3 * (textured - mean), atol=0.51)


def test_brightness_raises_the_hsv_value():
    grey = np.full((1, 32, 32, 3), 100, np.uint8)
    assert np.all(robustness.corrupt(grey, "brightness", 1) == round(100 + 0.05 * 255))
    assert np.all(robustness.corrupt(grey, "brightness", 5) == round(100 + 0.3 * 255))


def test_pixelate_and_jpeg_go_through_pillow_at_the_benchmark_settings(textured):
    from PIL import Image

    image = textured[0]
    small = Image.fromarray(image).resize((20, 20), Image.Resampling.BOX)
    expected = np.asarray(small.resize((32, 32), Image.Resampling.BOX))
    assert np.array_equal(robustness.corrupt(image[None], "pixelate", 5)[0], expected)
    # A JPEG round trip at quality 40 changes the image; twice gives nearly the same again.
    once = robustness.corrupt(image[None], "jpeg_compression", 5)
    assert np.abs(once.astype(int) - image).mean() > 1
    assert np.abs(robustness.corrupt(once, "jpeg_compression", 5).astype(int) - once).mean() < 1.5


def test_bad_arguments_are_refused(textured):
    with pytest.raises(ValueError, match="unknown corruption"):
        robustness.corrupt(textured, "fog", 1)
    with pytest.raises(ValueError, match="severity"):
        robustness.corrupt(textured, "contrast", 6)
    with pytest.raises(ValueError, match="uint8"):
        robustness.corrupt(textured.astype(np.float32), "contrast", 1)


def test_fixed_subset_is_seeded_sorted_and_distinct():
    first = robustness.fixed_subset(10_000, 1_000, seed=0)
    assert np.array_equal(first, robustness.fixed_subset(10_000, 1_000, seed=0))
    assert len(np.unique(first)) == 1_000 and np.all(np.diff(first) > 0)
    assert not np.array_equal(first, robustness.fixed_subset(10_000, 1_000, seed=1))
    assert np.array_equal(robustness.fixed_subset(50, 100), np.arange(50))


class LabelReader:
    """A stand-in model whose prediction is the class written in pixel (0, 0, red)."""

    name = "reader"

    def __call__(self, x, training=False):
        x = np.asarray(x)
        return np.eye(100, dtype=np.float32)[x[:, 0, 0, 0].astype(int) % 100]


def marked(labels):
    images = np.zeros((len(labels), 32, 32, 3), np.uint8)
    images[:, 0, 0, 0] = labels
    return images


def test_the_table_puts_each_accuracy_under_its_corruption_and_severity():
    y = np.arange(20) % 100
    x = marked(y)
    sets = {}
    for severity in robustness.SEVERITIES:  # severity s spoils the first 2*s + (1 for "b") images
        for extra, name in ((0, "a"), (1, "b")):
            spoiled = y.copy()
            spoiled[:2 * severity + extra] += 1
            sets[(name, severity)] = (marked(spoiled), y)
    result = robustness.evaluate_robustness(LabelReader(), x, y, sets, batch_size=7)
    assert result.corruptions == ("a", "b") and result.clean == 1.0 and result.n_images == 20
    expected = np.array([[1 - (2 * s + e) / 20 for s in range(1, 6)] for e in (0, 1)])
    np.testing.assert_allclose(result.accuracy, expected)
    assert result.mean_corruption_accuracy == pytest.approx(expected.mean())
    assert result.drop == pytest.approx(1 - expected.mean())
    rows = result.rows()
    assert rows[1] == {"model": "reader", "corruption": "a", "severity": 2,
                       "accuracy": pytest.approx(0.8), "n_images": 20}
    text = robustness.format_robustness(result)
    assert "drop 0.325" in text and "0.850" in text


def test_cifar_c_files_are_read_severity_by_severity(tmp_path):
    per = 6
    labels = np.tile(np.arange(per), 5).astype(np.int64) + 10 * np.repeat(np.arange(5), per)
    images = np.zeros((5 * per, 32, 32, 3), np.uint8)
    images[:, 0, 0, 0] = np.repeat(np.arange(1, 6), per)  # the severity, written in the image
    np.save(tmp_path / "labels.npy", labels)
    np.save(tmp_path / "contrast.npy", images)
    np.save(tmp_path / "pixelate.npy", images)
    sets = robustness.load_cifar_c(tmp_path, indices=[1, 4])
    assert sorted({name for name, _ in sets}) == ["contrast", "pixelate"]
    for severity in robustness.SEVERITIES:
        x, y = sets[("contrast", severity)]
        assert np.all(x[:, 0, 0, 0] == severity)
        assert list(y) == [10 * (severity - 1) + 1, 10 * (severity - 1) + 4]
    only = robustness.load_cifar_c(tmp_path, corruptions=["pixelate"])
    assert len(only) == 5 and len(only[("pixelate", 3)][0]) == per


def test_cifar_c_folder_without_labels_or_with_wrong_shapes_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="labels.npy"):
        robustness.load_cifar_c(tmp_path)
    np.save(tmp_path / "labels.npy", np.zeros(50, np.int64))
    np.save(tmp_path / "fog.npy", np.zeros((40, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match="fog.npy"):
        robustness.load_cifar_c(tmp_path)


def test_csv_and_figures(tmp_path, textured):
    y = np.arange(40) % 100
    x = marked(y)
    sets = robustness.corrupted_sets(x, y, corruptions=("contrast", "pixelate"))
    results = [robustness.evaluate_robustness(LabelReader(), x, y, sets, name=n) for n in ("m1", "m2")]
    robustness.save_robustness(results, tmp_path / "robustness.csv")
    lines = (tmp_path / "robustness.csv").read_text().splitlines()
    assert lines[0] == "model,corruption,severity,accuracy,n_images"
    assert len(lines) == 1 + 2 * (2 * 5 + 2) and lines[-1].startswith("m2,clean,,1.0")
    fig = visualization.plot_robustness(results, tmp_path / "robustness.png")
    panel = fig.axes[1]
    assert panel.get_title().startswith("m2: clean 1.000, corrupted")
    for line, values in zip(panel.get_lines(), results[1].accuracy):
        np.testing.assert_allclose(line.get_ydata(), values)
    assert panel.get_lines()[2].get_ydata()[0] == results[1].clean  # the clean level line
    visualization.plot_corruptions(textured[0], tmp_path / "corruptions.png")
    for name in ("robustness.png", "corruptions.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    matplotlib.pyplot.close("all")


def test_headline_gives_the_mean_the_mildest_noise_and_each_corruption():
    accuracy = np.arange(10, dtype=np.float64).reshape(2, 5) / 10  # rows: blur, then noise
    result = robustness.Robustness("m", clean=0.9, corruptions=("gaussian_blur", "gaussian_noise"),
                                   accuracy=accuracy, n_images=10)
    assert result.headline() == {"mean_corruption": 0.45, "noise_s1": 0.5,
                                 "per_corruption": {"gaussian_blur": 0.2, "gaussian_noise": 0.7}}
