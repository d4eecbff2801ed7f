"""benchmarks/screen_third.py: both candidate families build and train with today's package
(a smoke run on synthetic data, one epoch each); candidates parse from their names."""

import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))
import screen_third  # noqa: E402


def test_candidate_names_override_the_base_recipe():
    c = screen_third.parse_candidate("new+widths=128/256/512+epochs=16+learning_rate=1.2",
                                     screen_third.candidates())
    assert c["widths"] == (128, 256, 512) and c["epochs"] == 16 and c["learning_rate"] == 1.2
    assert c["augmentation"] == "tuned" and c["arch"] == "fast"
    with pytest.raises(ValueError, match="unknown recipe key 'widht'"):
        screen_third.parse_candidate("new+widht=3", screen_third.candidates())


def test_both_families_train_one_epoch_and_are_recorded(tmp_path):
    out = tmp_path / "screen.json"
    screen_third.main(["--synthetic", "300", "--candidates", "new_e5", "old_e10", "--epochs", "1",
                       "--precision", "float32", "--out", str(out)])
    results = json.loads(out.read_text())
    assert [r["name"] for r in results] == ["new_e5", "old_e10"]
    for r in results:
        assert len(r["val_curve"]) == 1 and 0.0 <= r["val_accuracy"] <= 1.0
    assert results[0]["recipe"]["widths"] == [96, 192, 384]
    assert results[1]["recipe"]["augmentation"] == "resnet9"
