"""benchmarks/third_recipes.py speed: each measurement times the recipe in the precision it
names (a precision set before Keras' clear_session would be lost) and leaves the global
policy as it was; the report says what was timed. Small networks stand in for the recipes."""

import dataclasses
import json
import os
import sys

import keras
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))
import third_recipes  # noqa: E402

from cifar100cnn import data, recipes  # noqa: E402


@pytest.fixture
def small_recipes(monkeypatch):
    small = {"third_tuned": dataclasses.replace(recipes.RECIPES["third_tuned"], widths=(8, 8, 8), batch_size=8),
             "third_resnet9": dataclasses.replace(recipes.RECIPES["third_resnet9"], width=4, batch_size=8)}
    monkeypatch.setattr(recipes, "RECIPES", {**recipes.RECIPES, **small})
    return data.make_synthetic(64, 16, seed=0)[0]


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_each_measurement_computes_in_its_precision(small_recipes, precision):
    x, y = small_recipes
    keras.mixed_precision.set_global_policy("float32")
    try:
        result = third_recipes.time_recipe("third_tuned", precision, x, y, steps=1)
        assert result["compute_dtype"] == ("bfloat16" if precision == "mixed_bfloat16" else "float32")
        assert keras.mixed_precision.global_policy().name == "float32"
        assert result["epoch_seconds"] == pytest.approx(result["steps_seconds"] + result["val_seconds"])
        assert result["steps_seconds"] == pytest.approx(5000 * result["step_seconds"])  # 40,000 / 8
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_step_timer_trains_the_timed_steps_after_one_warm_up(small_recipes):
    x, y = small_recipes
    recipe = recipes.RECIPES["third_tuned"]
    model = third_recipes.build("third_tuned", x)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    seconds = third_recipes.step_seconds(model, recipe, x, y, steps=2)
    assert seconds > 0
    assert int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 3


@pytest.mark.slow
def test_speed_report_names_what_it_timed(small_recipes, tmp_path, capsys):
    out = tmp_path / "speed.json"
    third_recipes.main(["speed", "--steps", "1", "--rounds", "1", "--output", str(out)])
    report = json.loads(out.read_text())
    assert {(row["recipe"], row["precision"]) for row in report["rows"]} == {
        (r, p) for r in third_recipes.RECIPE_NAMES for p in third_recipes.PRECISIONS}
    assert report["xla"] is False and "train_on_batch" in report["what"]
    assert all(row["pipeline_seconds"] > 0 for row in report["rows"])
    assert "| third_tuned | mixed_bfloat16 |" in capsys.readouterr().out
