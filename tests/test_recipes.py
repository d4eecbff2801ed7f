"""The recipes: frozen, typed, validated; a misspelt field fails loudly."""

import ast
import dataclasses
import glob
import inspect
import os
import re

import pytest

from cifar100cnn import recipes


@pytest.mark.parametrize("epochs", [-1, 0, 2.5, "3"])
def test_a_recipe_refuses_epochs_that_are_not_a_positive_integer(epochs):
    expected = f"epochs must be a positive integer, got {epochs!r}"
    with pytest.raises(ValueError, match=re.escape(expected)):
        recipes.recipe("baseline", epochs=epochs)
    with pytest.raises(ValueError, match=re.escape(expected)):
        dataclasses.replace(recipes.VGG16_FINETUNE, epochs=epochs)


def test_a_recipe_refuses_unknown_fields_and_names():
    with pytest.raises(TypeError, match="learning_rat"):
        recipes.recipe("third_tuned", learning_rat=0.5)
    with pytest.raises(TypeError, match="learning_rat"):
        dataclasses.replace(recipes.THIRD_TUNED, learning_rat=0.5)
    with pytest.raises(ValueError, match=r"unknown recipe 'huge'; expected one of \['baseline'"):
        recipes.recipe("huge")
    with pytest.raises(ValueError, match=r"unknown optimizer 'adam'; expected one of \('rmsprop'"):
        recipes.recipe("baseline", optimizer="adam")
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipes.BASELINE.epochs = 3


def test_a_recipe_override_changes_that_field_alone():
    changed = recipes.recipe("third_tuned", epochs=3, learning_rate=0.5)
    assert (changed.epochs, changed.learning_rate) == (3, 0.5)
    assert dataclasses.replace(changed, epochs=16, learning_rate=1.2) == recipes.THIRD_TUNED


def test_every_recipe_field_says_what_it_means_on_its_line():
    source = inspect.getsource(recipes.Recipe)
    fields = [node for node in ast.parse(source).body[0].body if isinstance(node, ast.AnnAssign)]
    lines = source.splitlines()
    assert [field.target.id for field in fields] == [f.name for f in dataclasses.fields(recipes.Recipe)]
    assert all("  # " in lines[field.lineno - 1] for field in fields)


def test_the_tuned_recipe_is_the_documented_one():
    recipe = recipes.THIRD_TUNED
    assert (recipe.epochs, recipe.batch_size, recipe.optimizer, recipe.learning_rate,
            recipe.momentum, recipe.weight_decay, recipe.label_smoothing, recipe.augmentation,
            recipe.widths) == (16, 512, "sgd", 1.2, 0.9, 1e-2, 0.2, "tuned", (128, 256, 512))
    assert recipes.RECIPES["third_tuned"] is recipe


def test_every_recipe_field_is_read_by_the_package():
    """A field nothing reads would be a setting that silently does nothing."""
    package = os.path.dirname(recipes.__file__)
    read = set()
    for path in glob.glob(os.path.join(package, "*.py")):
        if os.path.basename(path) != "recipes.py":
            with open(path) as handle:
                read |= {node.attr for node in ast.walk(ast.parse(handle.read()))
                         if isinstance(node, ast.Attribute)}
    fields = [f.name for f in dataclasses.fields(recipes.Recipe)]
    assert [name for name in fields if name not in read] == []
