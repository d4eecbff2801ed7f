"""``python -m cifar100cnn predict IMAGE...`` on PNG and JPEG files made
here, with a tiny model saved here; one-line errors for missing, non-image and broken files."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras import layers
from PIL import Image

from cifar100cnn import artifacts, data, predict
from cifar100cnn.__main__ import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bands(width, height, outer, middle, vertical=True):
    """An image whose middle half (of its longer side) is ``middle`` and the rest ``outer``."""
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[:] = outer
    if vertical:  # wide image: bands side by side
        pixels[:, width // 4:3 * width // 4] = middle
    else:  # tall image: bands one above the other
        pixels[height // 4:3 * height // 4] = middle
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    bands(128, 64, (255, 0, 0), (0, 200, 0)).save(folder / "wide.png")
    bands(60, 120, (0, 0, 0), (255, 255, 255), vertical=False).save(folder / "tall.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image\n")
    return folder


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """A tiny CIFAR-shaped model saved under the baseline's file name."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3), name="image")
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Conv2D(4, 3, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(100, activation="softmax")(x), name="tiny")
    folder = tmp_path_factory.mktemp("models")
    artifacts.save_model(model, artifacts.model_path("baseline", folder))
    return folder


def test_shorter_side_to_32_then_the_centre_square(pictures):
    wide = predict.load_image(str(pictures / "wide.png"))
    assert wide.shape == (32, 32, 3) and wide.dtype == np.uint8
    # 128x64 -> 64x32: the centre 32 columns are the green middle band, red cut away
    # (Lanczos resampling leaves a faint fringe at the cut).
    assert np.all(wide[:, 3:-3] == (0, 200, 0))
    assert np.abs(wide[:, [0, -1]].astype(int) - (0, 200, 0)).max() < 20
    tall = predict.load_image(str(pictures / "tall.jpg"))
    # 60x120 -> 32x64: the centre 32 rows are the white band (JPEG: nearly white).
    assert tall.shape == (32, 32, 3) and tall[3:-3].min() > 245 and tall.min() > 225


def test_any_mode_becomes_rgb(tmp_path):
    Image.new("L", (40, 40), 90).save(tmp_path / "grey.png")
    Image.new("RGBA", (33, 50), (10, 20, 30, 0)).save(tmp_path / "alpha.png")
    Image.new("P", (32, 32), 3).save(tmp_path / "palette.gif")
    for name in ("grey.png", "alpha.png", "palette.gif"):
        image = predict.load_image(str(tmp_path / name))
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8, name
    assert np.all(predict.load_image(str(tmp_path / "grey.png")) == 90)


@pytest.mark.parametrize("name, reason", [("missing.png", "no such file"),
                                          ("notes.txt", "not an image"),
                                          (".", "is a folder")])
def test_unreadable_files_give_one_line_naming_the_file(pictures, name, reason):
    path = str(pictures / name)
    with pytest.raises(predict.PredictError) as caught:
        predict.load_image(path)
    message = str(caught.value)
    assert message.startswith(path) and reason in message and "\n" not in message


def test_cli_prints_the_top5_of_png_and_jpeg(pictures, models_dir, capsys):
    paths = [str(pictures / "wide.png"), str(pictures / "tall.jpg")]
    status = main(["predict", *paths, "--model", "baseline", "--models-dir", str(models_dir)])
    out = capsys.readouterr().out
    assert status == 0
    model = artifacts.load_model(artifacts.model_path("baseline", models_dir))
    images = np.stack([predict.load_image(p) for p in paths])
    expected = predict.top_classes(model, images, data.FINE_LABEL_NAMES, 5)
    blocks = out.split("\n" + paths[1] + "\n")
    assert paths[0] in blocks[0] and len(blocks) == 2
    for block, top in zip(blocks, expected):
        ranked = [line.split() for line in block.splitlines() if line.startswith("  ")]
        assert [row[1] for row in ranked] == [name for name, _ in top]
        assert [row[0] for row in ranked] == ["1.", "2.", "3.", "4.", "5."]
        assert float(ranked[0][2].rstrip("%")) == pytest.approx(100 * top[0][1], abs=0.051)


def test_cli_reports_bad_images_one_line_each_and_fails(pictures, models_dir, capsys):
    missing, text = str(pictures / "missing.png"), str(pictures / "notes.txt")
    status = main(["predict", missing, text, str(pictures / "wide.png"),
                   "--model", "baseline", "--models-dir", str(models_dir), "--labels", "synthetic"])
    captured = capsys.readouterr()
    assert status == 1
    errors = captured.err.strip().splitlines()
    assert len(errors) == 2 and missing in errors[0] and text in errors[1]
    assert "Traceback" not in captured.err
    assert "wide.png" in captured.out and "syn" in captured.out  # the good image still gets its answer


def test_a_missing_model_is_one_line_naming_it(pictures, tmp_path, capsys):
    status = main(["predict", str(pictures / "wide.png"), "--models-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1
    assert artifacts.model_path("third", tmp_path) in err and "ThirdModel.ipynb" in err


def test_a_broken_model_file_is_one_line_naming_it_without_traceback(pictures, tmp_path):
    broken = tmp_path / artifacts.MODEL_FILES["third"]
    broken.write_bytes(b"PK\x03\x04 this is no Keras archive")
    command = [sys.executable, "-m", "cifar100cnn", "predict", str(pictures / "wide.png"),
               "--models-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(broken) in lines[0], result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr


def test_a_folder_or_a_list_of_images_and_enlarged_examples(tmp_path):
    from scipy.ndimage import zoom

    coarse = np.random.default_rng(0).uniform(20, 235, (3, 8, 8, 3))
    images = np.clip(zoom(coarse, (1, 4, 4, 1), order=1), 0, 255).astype(np.uint8)  # photo-like
    paths = predict.write_examples(images, str(tmp_path / "examples"), ["cat", "dog", "cup"])
    assert [os.path.basename(p) for p in paths] == ["example_0_cat.png", "example_1_dog.png",
                                                    "example_2_cup.png"]
    assert Image.open(paths[0]).size == (128, 128)
    for path, image in zip(paths, images):  # enlarged 4x, read back: nearly the same image
        assert np.abs(predict.load_image(path).astype(int) - image).mean() < 1
    (tmp_path / "examples" / ".hidden").write_text("")
    assert predict.image_files(str(tmp_path / "examples")) == sorted(paths)
    assert predict.image_files(paths[0]) == [paths[0]]
    assert predict.image_files(paths[:2]) == paths[:2]


def test_error_messages_are_one_line(tmp_path):
    assert predict.one_line("cannot read\n  the file:\tbad  header\n") == "cannot read the file: bad header"
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"\x00\x01 not a zip archive\n\nat all")
    with pytest.raises(predict.PredictError) as caught:
        predict.load_predictor(str(broken))
    assert str(broken) in str(caught.value) and "\n" not in str(caught.value)


def test_the_predictions_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from cifar100cnn import visualization

    images = np.zeros((2, 32, 32, 3), np.uint8)
    tops = [[("apple", 0.9), ("pear", 0.05)], [("cup", 0.4), ("bowl", 0.3)]]
    fig = visualization.plot_predictions(images, tops, ["a.png", "b.jpg"], tmp_path / "own.png")
    assert (tmp_path / "own.png").stat().st_size > 5_000
    bars = fig.axes[1]
    assert [t.get_text() for t in bars.get_yticklabels()] == ["pear", "apple"]  # best on top
    assert [t.get_text() for t in bars.texts] == ["5%", "90%"]
    matplotlib.pyplot.close(fig)


@pytest.mark.parametrize("factor", [2, 3, 8])
def test_an_image_enlarged_by_a_whole_factor_comes_back_pixel_for_pixel(tmp_path, models_dir, factor):
    original = np.random.default_rng(factor).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    path = tmp_path / f"enlarged_x{factor}.png"
    side = 32 * factor
    Image.fromarray(original).resize((side, side), Image.Resampling.NEAREST).save(path)
    np.testing.assert_array_equal(predict.load_image(str(path)), original)
    Image.fromarray(original).save(tmp_path / "original.png")
    model = predict.load_predictor(artifacts.model_path("baseline", models_dir))
    names = data.label_names("cifar100")[0]
    small, big = predict.top_classes(model, np.stack([predict.load_image(str(tmp_path / "original.png")),
                                                      predict.load_image(str(path))]), names)
    assert small == big  # the same classes with the same probabilities


def test_an_enlarged_photo_that_is_not_square_keeps_its_centre(tmp_path):
    original = np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)  # wide
    path = tmp_path / "wide_x4.png"
    Image.fromarray(original).resize((48 * 4, 32 * 4), Image.Resampling.NEAREST).save(path)
    np.testing.assert_array_equal(predict.load_image(str(path)), original[:, 8:40])
