"""VGG16 transfer learning (transfer.py): the original parameter counts, preprocessing,
upscaling, cached features and how the ImageNet weights are found."""

import keras
import numpy as np
import pytest

from cifar100cnn import inference, transfer

IMAGES = np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3)).astype(np.uint8)


def test_vgg16_parts_have_the_original_parameter_counts():
    base = transfer.build_vgg16_base(weights=None)
    head = transfer.build_vgg16_head(base.output_shape[1:])
    assert base.count_params() == transfer.VGG16_BASE_PARAMS == 14_714_688
    assert head.count_params() == 419_684
    model = transfer.assemble_vgg16(base, head)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 419_684  # base and preprocessing stay frozen


def test_vgg16_preprocessing_equals_keras_preprocess_input():
    images = np.random.default_rng(1).uniform(0, 255, (8, 32, 32, 3)).astype("float32")
    ours = np.asarray(transfer.vgg16_preprocessing()(images))
    expected = keras.applications.vgg16.preprocess_input(images.copy())
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_cached_feature_head_equals_assembled_model():
    base = transfer.build_vgg16_base(weights=None)
    head = transfer.build_vgg16_head(base.output_shape[1:])
    features = inference.predict_in_batches(transfer.vgg16_feature_extractor(base), IMAGES, batch_size=4)
    from_features = np.asarray(head(features))
    assembled = np.asarray(transfer.assemble_vgg16(base, head)(IMAGES))
    np.testing.assert_allclose(assembled, from_features, rtol=1e-4, atol=1e-6)


def test_upscaled_vgg16_takes_32px_images_and_sees_them_resized():
    base = transfer.build_vgg16_base(weights=None, input_size=64)
    assert base.output_shape[1:] == (2, 2, 512) and base.count_params() == 14_714_688
    head = transfer.build_vgg16_head(base.output_shape[1:])
    assert head.count_params() == 2048 * 512 + 512 + 512 * 256 + 256 + 256 * 100 + 100
    model = transfer.assemble_vgg16(base, head)
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 100)
    features = inference.predict_in_batches(transfer.vgg16_feature_extractor(base), IMAGES, batch_size=4)
    resized = keras.ops.image.resize(IMAGES.astype("float32"), (64, 64), interpolation="bilinear")
    expected = np.asarray(base(transfer.vgg16_preprocessing()(resized)))
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(model(IMAGES)), np.asarray(head(features)),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("size", [31, 225, 64.5, "96"])
def test_bad_vgg16_input_sizes_are_refused(size):
    with pytest.raises(ValueError, match="input size"):
        transfer.build_vgg16_base(weights=None, input_size=size)


def test_offline_imagenet_weights_give_instructions(monkeypatch):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://example.org/vgg16.h5: None -- "
                        "[Errno -3] Temporary failure in name resolution")

    monkeypatch.delenv("VGG16_WEIGHTS", raising=False)
    monkeypatch.setattr(keras.applications, "VGG16", offline)
    with pytest.raises(transfer.WeightsUnavailableError, match="VGG16_WEIGHTS") as error:
        transfer.build_vgg16_base("imagenet")
    # One line for the notebook's skip message: why (Keras' reason, without its URL) and what to do.
    message = str(error.value)
    assert "\n" not in message and "--vgg16-weights FILE" in message
    assert "failed ([Errno -3] Temporary failure in name resolution)" in message
    assert "example.org" not in message


def test_weights_file_is_read_and_the_environment_is_not(tmp_path, monkeypatch):
    weights_file = tmp_path / "vgg16_notop.weights.h5"
    transfer.build_vgg16_base(weights=None).save_weights(weights_file)
    base = transfer.build_vgg16_base(str(weights_file))
    assert base.count_params() == 14_714_688
    with pytest.raises(transfer.WeightsUnavailableError, match="not found"):
        transfer.build_vgg16_base(str(tmp_path / "missing.h5"))
    # $VGG16_WEIGHTS is for the notebooks and the CLI (environment.vgg16_weights).
    monkeypatch.setenv("VGG16_WEIGHTS", str(weights_file))
    assert transfer.resolve_vgg16_weights("imagenet") == "imagenet"


def test_finetuning_unfreezes_block5_alone():
    model = transfer.unfreeze_block5(transfer.build_vgg16(weights=None))
    base = next(layer for layer in model.layers if layer.name == "vgg16")
    assert sorted(layer.name for layer in base.layers if layer.trainable and layer.weights) == [
        "block5_conv1", "block5_conv2", "block5_conv3"]
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 419_684 + 3 * (3 * 3 * 512 * 512 + 512)  # the head + block 5
