"""The augmentation presets and their resamplers (augment.py): geometry checked on patterns
whose transformed position is known, and against TensorFlow's own affine transform."""

import keras
import numpy as np
import pytest

from cifar100cnn import augment

IMAGES = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype(np.uint8)


def _affine(images, angle=0.0, shift_x=0.0, shift_y=0.0, flip_x=1.0, flip_y=1.0):
    row = [np.array([value], "float32") for value in (angle, shift_x, shift_y, flip_x, flip_y)]
    transforms = augment.affine_transforms(*row, 32, 32)
    return np.asarray(keras.ops.image.affine_transform(images, transforms, fill_mode="nearest"))


def test_affine_transforms_match_numpy_rotations_flips_and_shifts():
    image = IMAGES[:1].astype("float32")
    np.testing.assert_allclose(_affine(image), image, atol=1e-3)
    np.testing.assert_allclose(_affine(image, flip_x=-1.0), image[:, :, ::-1], atol=1e-3)
    np.testing.assert_allclose(_affine(image, flip_y=-1.0), image[:, ::-1], atol=1e-3)
    np.testing.assert_allclose(_affine(image, angle=np.pi / 2)[0], np.rot90(image[0]), atol=1e-2)
    shifted = _affine(image, shift_x=3.0)
    np.testing.assert_allclose(shifted[:, :, :-3], image[:, :, 3:], atol=1e-3)
    np.testing.assert_allclose(shifted[:, :, -3:], np.repeat(image[:, :, -1:], 3, axis=2), atol=1e-3)


@pytest.mark.parametrize("fill_mode, degrees, shift", [("nearest", 40, 0.2), ("reflect", 0, 0.125),
                                                       ("reflect", 90, 0.9), ("nearest", 180, 1.5)])
def test_resample_affine_equals_tensorflows_affine_transform(fill_mode, degrees, shift):
    rng = np.random.default_rng(degrees)
    images = rng.integers(0, 256, (32, 32, 32, 3)).astype("float32")

    def uniform(limit):
        return rng.uniform(-limit, limit, len(images)).astype("float32")

    def flips():
        return rng.choice([-1.0, 1.0], len(images)).astype("float32")

    transforms = augment.affine_transforms(uniform(np.radians(degrees)), uniform(shift * 32),
                                          uniform(shift * 32), flips(), flips(), 32, 32)
    expected = np.asarray(keras.ops.image.affine_transform(images, transforms, fill_mode=fill_mode))
    np.testing.assert_allclose(np.asarray(augment.resample_affine(images, transforms, fill_mode)),
                               expected, atol=0.01)  # pixel values 0-255


def test_resample_affine_compiles_with_xla():
    import tensorflow as tf

    images = IMAGES.astype("float32")
    transforms = augment.affine_transforms(*(np.full(len(images), v, "float32")
                                            for v in (0.3, 2.5, -1.5, -1.0, 1.0)), 32, 32)
    compiled = tf.function(lambda x, t: augment.resample_affine(x, t, "reflect"), jit_compile=True)
    np.testing.assert_allclose(np.asarray(compiled(images, transforms)),
                               np.asarray(augment.resample_affine(images, transforms, "reflect")),
                               atol=0.01)
    assert augment.build_augmentation("tuned", xla=True).supports_jit
    assert not augment.build_augmentation("tuned").supports_jit  # TensorFlow's kernel: no XLA


@pytest.mark.parametrize("kind", ["original", "tuned"])
def test_both_resamplers_give_the_same_augmentation(kind):
    images = IMAGES.astype("float32")
    kernel = augment.build_augmentation(kind, seed=5)(images, training=True)
    gathers = augment.build_augmentation(kind, seed=5, xla=True)(images, training=True)
    np.testing.assert_allclose(np.asarray(gathers), np.asarray(kernel), atol=0.01)


def test_resample_affine_refuses_other_fill_modes():
    with pytest.raises(ValueError, match="fill_mode"):
        augment.resample_affine(IMAGES.astype("float32"), np.zeros((len(IMAGES), 8), "float32"),
                               "wrap")


def _principal_angle(channel):
    """The angle (degrees, in -90..90) of the long axis of the lit pixels of one channel."""
    rows, cols = np.indices(channel.shape)
    weights = channel / channel.sum()
    my, mx = (weights * rows).sum(), (weights * cols).sum()
    cyy, cxx = (weights * (rows - my) ** 2).sum(), (weights * (cols - mx) ** 2).sum()
    cxy = (weights * (rows - my) * (cols - mx)).sum()
    return np.degrees(0.5 * np.arctan2(2 * cxy, cxx - cyy))


def test_original_augmentation_rotates_up_to_40_degrees_and_flips_vertically_only():
    """The original's ImageDataGenerator(rotation_range=40, vertical_flip=True, shifts 0.2), seen
    on an asymmetric pattern. Channel 0: the top half lit; whatever the rotation (<= 40 deg) and
    shift (<= 6.4 px), the top-centre pixel reads from the top half unless the image is flipped
    vertically. Channel 1: a horizontal bar through the centre, away from the edges: only a
    rotation tilts it. Channel 2: the left half lit; the left-centre pixel stays lit unless the
    image is flipped horizontally, which the original never does."""
    image = np.zeros((300, 32, 32, 3), "float32")
    image[:, :16, :, 0] = 255
    image[:, 15:17, 4:28, 1] = 255
    image[:, :, :16, 2] = 255
    out = np.asarray(augment.build_augmentation("original", seed=3)(image, training=True))
    top_centre = out[:, 0, 15:17, 0].mean(axis=1)
    assert np.all((top_centre < 1) | (top_centre > 254))
    assert 0.35 < (top_centre < 1).mean() < 0.65  # flipped upside down half of the time
    angles = np.abs([_principal_angle(picture[..., 1]) for picture in out])
    assert angles.max() < 42  # rotations within +-40 degrees ...
    assert angles.max() > 35 and (angles > 10).mean() > 0.6  # ... drawn over the whole range
    assert np.all(out[:, 15:17, 0, 2] > 254)  # never mirrored left-right


def test_original_augmentation_shifts_by_at_most_a_fifth_of_the_side():
    # One bright pixel at the centre stays near the centre (rotation about the centre), moves by
    # at most 0.2 x 32 = 6.4 px and, over many draws, lands on both sides (shifts are symmetric).
    image = np.zeros((200, 32, 32, 3), "float32")
    image[:, 15:17, 15:17] = 255
    layer = augment.build_augmentation("original", seed=3)
    out = np.asarray(layer(image, training=True))[..., 0]
    rows = np.array([np.unravel_index(np.argmax(o), o.shape)[0] for o in out])
    assert np.all(np.abs(rows - 15.5) <= 8)
    assert (rows < 14).any() and (rows > 17).any()
    assert np.array_equal(np.asarray(layer(image, training=False)), image)


def test_augmentations_keep_the_shape_and_change_the_images():
    # (Unknown names: test_reliability.py::test_unknown_presets_are_refused_naming_the_known_ones.)
    batch = IMAGES.astype("float32")
    for kind in augment.AUGMENTATIONS:
        augmented = np.asarray(augment.build_augmentation(kind)(batch, training=True))
        assert augmented.shape == batch.shape
        assert not np.allclose(augmented, batch)
    assert augment.build_augmentation(None) is None
