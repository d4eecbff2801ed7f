"""Data loading, the label metadata, the original split, synthetic data and input pipelines.
(Damaged, unsafe or missing archives and bad inputs: test_reliability_data.py.)"""

import tarfile

import numpy as np
import pytest

import fake_cifar
from cifar100cnn import data


def make_pipeline(*args, **kwargs):
    """``tf_pipeline.make_pipeline``: tf.data is TensorFlow's (the test skips without it)."""
    return pytest.importorskip("cifar100cnn.tf_pipeline").make_pipeline(*args, **kwargs)


# The sha256 published for https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz (it is
# also the file_hash in keras.datasets.cifar100), written out here independently of the package.
PUBLISHED_SHA256 = "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"

# The superclass table of the CIFAR-100 web page, in the archive's spelling of the names.
OFFICIAL_SUPERCLASSES = {
    "aquatic_mammals": "beaver dolphin otter seal whale",
    "fish": "aquarium_fish flatfish ray shark trout",
    "flowers": "orchid poppy rose sunflower tulip",
    "food_containers": "bottle bowl can cup plate",
    "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
    "household_electrical_devices": "clock keyboard lamp telephone television",
    "household_furniture": "bed chair couch table wardrobe",
    "insects": "bee beetle butterfly caterpillar cockroach",
    "large_carnivores": "bear leopard lion tiger wolf",
    "large_man-made_outdoor_things": "bridge castle house road skyscraper",
    "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
    "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
    "medium_mammals": "fox porcupine possum raccoon skunk",
    "non-insect_invertebrates": "crab lobster snail spider worm",
    "people": "baby boy girl man woman",
    "reptiles": "crocodile dinosaur lizard snake turtle",
    "small_mammals": "hamster mouse rabbit shrew squirrel",
    "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "vehicles_1": "bicycle bus motorcycle pickup_truck train",
    "vehicles_2": "lawn_mower rocket streetcar tank tractor",
}


def test_a_local_archive_is_read_and_the_environment_is_not(tmp_path, monkeypatch):
    path = tmp_path / "local.tar.gz"
    written = fake_cifar.write_fake_archive(path, n_train=10, n_test=5)
    with pytest.warns(UserWarning):
        (x_train, _), _ = data.load_cifar100(path, verify=False)
    np.testing.assert_array_equal(x_train, written["x_train"])
    # $CIFAR100_ARCHIVE is for the notebooks and CLIs (environment.archive_settings).
    monkeypatch.setenv("CIFAR100_ARCHIVE", str(path))
    monkeypatch.setattr(data, "_load_with_keras", lambda label_mode: "downloaded")
    assert data.load_cifar100(verify=False) == "downloaded"


def test_the_archive_is_checked_against_the_published_sha256(tmp_path, monkeypatch):
    assert data.CIFAR100_SHA256 == PUBLISHED_SHA256
    # An archive with the published hash is accepted ...
    path = tmp_path / "cifar-100-python.tar.gz"
    written = fake_cifar.write_fake_archive(path, n_train=10, n_test=5)
    monkeypatch.setattr(data, "sha256_of", lambda _: PUBLISHED_SHA256)
    np.testing.assert_array_equal(data.read_archive(path)["x_train"], written["x_train"])
    # ... and one differing in the last digit is refused.
    monkeypatch.setattr(data, "sha256_of", lambda _: PUBLISHED_SHA256[:-1] + "8")
    with pytest.raises(data.DatasetError, match="sha256"):
        data.read_archive(path)


def test_label_names_and_superclasses_are_the_official_ones():
    assert len(data.FINE_LABEL_NAMES) == 100 and len(set(data.FINE_LABEL_NAMES)) == 100
    assert data.FINE_LABEL_NAMES == sorted(data.FINE_LABEL_NAMES)  # the archive's order
    assert data.COARSE_LABEL_NAMES == list(OFFICIAL_SUPERCLASSES)
    expected = {fine: coarse for coarse, members in OFFICIAL_SUPERCLASSES.items()
                for fine in members.split()}
    assert sorted(expected) == sorted(data.FINE_LABEL_NAMES)
    actual = {fine: data.COARSE_LABEL_NAMES[data.FINE_TO_COARSE[index]]
              for index, fine in enumerate(data.FINE_LABEL_NAMES)}
    assert actual == expected  # any two entries of FINE_TO_COARSE swapped show up here


def _numbered_images(n):
    """``n`` images whose first pixel spells their index (red + 256 x green), as a read-only
    broadcast view: 50,000 of them take 150 kB, not 150 MB."""
    codes = np.stack([np.arange(n) % 256, np.arange(n) // 256, np.full(n, 7)], axis=1)
    return np.broadcast_to(codes.astype(np.uint8)[:, None, None, :], (n, 32, 32, 3))


def _image_numbers(images):
    return images[:, 0, 0, 0].astype(np.int64) + 256 * images[:, 0, 0, 1].astype(np.int64)


def test_split_keeps_the_first_40000_for_training_and_the_last_10000_for_validation():
    x = _numbered_images(50_000)
    y = np.random.default_rng(0).integers(0, 100, 50_000)  # no period: each end looks different
    (x_train, y_train), (x_val, y_val) = data.split_train_val(x, y)
    np.testing.assert_array_equal(_image_numbers(x_train), np.arange(40_000))
    np.testing.assert_array_equal(_image_numbers(x_val), np.arange(40_000, 50_000))
    # Each image keeps its own label.
    np.testing.assert_array_equal(y_train, y[_image_numbers(x_train)])
    np.testing.assert_array_equal(y_val, y[_image_numbers(x_val)])


def test_split_rejects_images_of_the_wrong_shape():
    with pytest.raises(ValueError, match="shape"):
        data.split_train_val(np.zeros((10, 28, 28, 3), np.uint8), np.zeros(10, int))


def test_synthetic_data_is_deterministic_and_cifar_shaped():
    (a_train, a_labels), (a_test, _) = data.make_synthetic(600, 200, seed=7)
    (b_train, b_labels), (b_test, _) = data.make_synthetic(600, 200, seed=7)
    (c_train, _), _ = data.make_synthetic(600, 200, seed=8)
    np.testing.assert_array_equal(a_train, b_train)
    np.testing.assert_array_equal(a_labels, b_labels)
    np.testing.assert_array_equal(a_test, b_test)
    assert not np.array_equal(a_train, c_train)
    assert a_train.dtype == np.uint8 and a_train.shape == (600, 32, 32, 3)
    assert np.bincount(a_labels, minlength=100).min() == 6  # balanced classes
    assert a_train.std() > 20  # not blank


def test_synthetic_classes_differ_in_content():
    (x, y), _ = data.make_synthetic(2000, 10, seed=0)
    means = np.stack([x[y == c].mean(axis=0) for c in range(100)])
    # class-mean images differ clearly between classes
    spread = np.abs(means[:, None] - means[None]).mean(axis=(2, 3, 4))
    assert spread[~np.eye(100, dtype=bool)].min() > 1.0


def test_load_dataset_quick_is_small_and_labelled_synthetic():
    dataset = data.load_dataset("cifar100", quick=True)
    assert dataset.source.startswith("synthetic")
    assert (len(dataset.x_train), len(dataset.x_val), len(dataset.x_test)) == (1600, 400, 500)
    assert dataset.fine_names[0].startswith("syn")


def test_pipeline_batches_uint8_and_rejects_bad_labels():
    x = np.zeros((10, 32, 32, 3), np.uint8)
    batches = list(make_pipeline(x, np.arange(10), batch_size=4))
    assert [len(images) for images, _ in batches] == [4, 4, 2]
    assert batches[0][0].dtype.name == "uint8"
    with pytest.raises(ValueError, match="0..99"):
        make_pipeline(x, np.full(10, 100))



def test_pipeline_keeps_image_label_pairs_and_reshuffles_every_epoch():
    # Image i holds the value i everywhere, its label i mod 100: pairs must survive.
    x = np.arange(250).astype(np.uint8)[:, None, None, None] * np.ones((1, 32, 32, 3), np.uint8)
    y = np.arange(250) % 100
    ds = make_pipeline(x, y, batch_size=64, shuffle=True, seed=1)
    epochs = []
    for _ in range(2):
        order = []
        for images, labels in ds:
            assert np.array_equal(images.numpy()[:, 0, 0, 0] % 100, labels.numpy())
            order.extend(images.numpy()[:, 0, 0, 0].tolist())
        epochs.append(order)
    assert sorted(epochs[0]) == sorted(x[:, 0, 0, 0].tolist())  # each image once per epoch
    assert epochs[0] != epochs[1]  # a fresh order every epoch
    unshuffled = np.concatenate([images.numpy() for images in make_pipeline(x, batch_size=64)])
    assert np.array_equal(unshuffled, x)  # without labels: the images alone, in order


def test_pipeline_reads_the_array_in_place():
    # A change to the NumPy array after building shows up in the next epoch: no copy was taken.
    x = np.zeros((8, 32, 32, 3), np.uint8)
    ds = make_pipeline(x, np.zeros(8, np.int64), batch_size=8)
    x[3] = 7
    images, _ = next(iter(ds))
    assert images.numpy()[3].max() == 7

@pytest.mark.real_data
def test_real_archive_has_the_official_order_names_and_superclasses(real_archive):
    with pytest.warns(UserWarning):
        (x_train, y_train), (x_test, y_test) = data.load_cifar100(real_archive, verify=False)
    assert x_train.shape == (50_000, 32, 32, 3) and x_test.shape == (10_000, 32, 32, 3)
    assert y_train[:10].tolist() == [19, 29, 0, 11, 1, 86, 90, 28, 23, 31]
    assert y_test[:10].tolist() == [49, 33, 72, 51, 71, 92, 15, 14, 23, 0]
    assert x_train[:10, 0, 0, 0].tolist() == [255, 255, 250, 124, 43, 190, 50, 178, 122, 255]
    (_, y_val) = data.split_train_val(x_train, y_train)[1]
    assert data.class_count_range(y_val) == (77, 126)
    # The archive's own names and coarse labels agree with the package's tables.
    with tarfile.open(real_archive) as tar:
        meta = data._unpickle(tar.extractfile("cifar-100-python/meta").read(), real_archive)
    assert [name.decode() for name in meta[b"fine_label_names"]] == data.FINE_LABEL_NAMES
    assert [name.decode() for name in meta[b"coarse_label_names"]] == data.COARSE_LABEL_NAMES
    with pytest.warns(UserWarning):
        (_, coarse_train), (_, coarse_test) = data.load_cifar100(real_archive, verify=False,
                                                                 label_mode="coarse")
    np.testing.assert_array_equal(data.FINE_TO_COARSE[y_train], coarse_train)
    np.testing.assert_array_equal(data.FINE_TO_COARSE[y_test], coarse_test)


def test_label_names_follow_the_parameters_and_match_the_loaded_data():
    fine, coarse, f2c = data.label_names("cifar100", quick=True)
    assert fine[0].startswith("syn") and len(coarse) == 20 and f2c[99] == 19
    fine, coarse, f2c = data.label_names("cifar100", quick=False)
    assert fine[0] == "apple" and coarse[0] == "aquatic_mammals"
    np.testing.assert_array_equal(f2c, data.FINE_TO_COARSE)
    assert data.label_names("synthetic")[0][0].startswith("syn")
    with pytest.raises(ValueError, match="unknown data source"):
        data.label_names("cifar10")
    quick = data.load_dataset("cifar100", quick=True)
    assert (quick.fine_names, quick.coarse_names) == data.label_names("cifar100", quick=True)[:2]
