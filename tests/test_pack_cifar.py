"""benchmarks/pack_cifar.py: an archive packed into parts and rebuilt holds the same images,
labels and order, and the package reads the rebuilt one like the original."""

import os
import sys

import numpy as np

from cifar100cnn import data
from fake_cifar import write_fake_archive

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))
import pack_cifar  # noqa: E402


def test_packed_parts_rebuild_the_same_archive(tmp_path):
    original = tmp_path / "original.tar.gz"
    arrays = write_fake_archive(original, n_train=2000, n_test=1000, seed=3)
    pack_cifar.main(["pack", str(original), str(tmp_path / "packed"), "--parts", "2"])
    parts = sorted(str(p) for p in (tmp_path / "packed").iterdir())
    assert [os.path.basename(p) for p in parts] == ["part1", "part2"]
    assert sorted(os.listdir(parts[1])) == ["02000.webp"]  # three mosaics over two parts

    rebuilt = tmp_path / "rebuilt.tar.gz"
    pack_cifar.main(["unpack", *parts, "--out", str(rebuilt), "--check", str(original)])
    again = data.read_archive(rebuilt, verify=False)
    for key, value in arrays.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)

    images, labels, meta = pack_cifar.read_parts(parts)
    np.testing.assert_array_equal(images[2000:], arrays["x_test"])
    np.testing.assert_array_equal(labels["test_coarse"], arrays["test_coarse_labels"])
    assert meta["fine_label_names"][:2] == ["apple", "aquarium_fish"]
