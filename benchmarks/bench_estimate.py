"""The benchmark's extrapolations: measured samples scaled to the full split (40,000 train +
10,000 validation images, 10,000 test), stage totals at each recipe's default epochs, and the
compute floor (the pipeline's FLOPs at the machine's measured peak).

Pure arithmetic on the dict ``bench_measure.measure_all`` returns; no TensorFlow.
"""

N_TRAIN, N_VAL, N_TEST = 40_000, 10_000, 10_000

# A training step costs about three forward passes: forward, gradients of the activations,
# gradients of the weights.
TRAINING_PASSES = 3


def full_epoch_seconds(phases, n_train, n_val):
    """Scale the measured phases to a 40,000 / 10,000 image epoch (callbacks: as measured)."""
    return (phases["train"] * N_TRAIN / n_train + phases["val"] * N_VAL / n_val
            + phases["callbacks"])


def training_figures(sample):
    """A model's measured epoch sample with its training images/s and full-size epoch seconds."""
    phases, n_train = sample["phases"], sample["n_train"]
    return dict(sample, train_ips=n_train / phases["train"],
                epoch_s=full_epoch_seconds(phases, n_train, sample["n_val"]))


def vgg16_stage(vgg):
    """The VGG16 transfer both ways: one epoch and the whole stage at the recipe's epochs
    (the original: the base over every image every epoch; ours: features once, then the head)."""
    n_train, n_val, n_extract = vgg["n_train"], vgg["n_val"], vgg["n_extract"]
    original = dict(phases=vgg["original"], n_train=n_train, n_val=n_val,
                    epoch_s=full_epoch_seconds(vgg["original"], n_train, n_val))
    extraction = dict(n=n_extract, per_image=vgg["extract"] / n_extract,
                      per_image_predict=vgg["extract_predict"] / n_extract)
    head, head_before = ({"phases": vgg[k], "epoch_s": sum(vgg[k].values())}
                         for k in ("head", "head_before"))
    extract_s = extraction["per_image"] * (N_TRAIN + N_VAL)
    return dict(original=original, extraction=extraction, head=head, head_before=head_before,
                epochs=vgg["epochs"], extract_s=extract_s,
                original_stage_s=vgg["epochs"] * original["epoch_s"],
                ours_stage_s=extract_s + vgg["epochs"] * head["epoch_s"])


def full_pipeline(models, vgg, vgg_infer, option=None):
    """(stage, seconds): default epochs x full-size epoch times, plus VGG16 features and test
    inference. With ``option`` (training figures), it replaces the package's third_tuned."""
    parts = []
    for m in models:
        epoch_s = option["epoch_s"] if option and m["name"] == "third_tuned" else m["epoch_s"]
        parts.append((f"{m['name']}: {m['epochs']} epochs", m["epochs"] * epoch_s))
    parts.append(("vgg16: features of 50,000 images (once)", vgg["extract_s"]))
    parts.append((f"vgg16: head, {vgg['epochs']} epochs", vgg["epochs"] * vgg["head"]["epoch_s"]))
    test_s = sum(N_TEST / m["infer_ips"] for m in models) + N_TEST / vgg_infer["infer_ips"]
    parts.append(("test-set predictions, five models", test_s))
    return parts


def floor_flops(models, vgg, vgg_infer):
    """FLOPs of each stage, in the order of ``full_pipeline``."""
    def training(forward, epochs):
        return epochs * (N_TRAIN * TRAINING_PASSES + N_VAL) * forward

    parts = [training(m["forward_flops"], m["epochs"]) for m in models]
    parts.append((N_TRAIN + N_VAL) * (vgg_infer["forward_flops"] - vgg_infer["head_flops"]))
    parts.append(training(vgg_infer["head_flops"], vgg["epochs"]))
    parts.append(N_TEST * (sum(m["forward_flops"] for m in models) + vgg_infer["forward_flops"]))
    return parts


def estimate(measurements):
    """Everything the report derives from the measurements.

    Args:
        measurements: the dict of ``bench_measure.measure_all``.

    Returns:
        A dict: ``vgg`` (``vgg16_stage``), ``models`` and ``variants`` (with training
        figures), ``option`` (the narrower third_tuned's label), ``parts`` and
        ``parts_option`` (``full_pipeline`` without and with it) and their ``total`` and
        ``total_option``, ``flops`` per stage, ``peak`` FLOP/s and the ``floor`` seconds.
    """
    m = measurements
    models = [training_figures(sample) for sample in m["models"]]
    variants = {label: training_figures(sample) for label, sample in m["variants"].items()}
    option = next(label for label, v in variants.items() if v["narrow"])
    vgg = vgg16_stage(m["vgg"])
    parts = full_pipeline(models, vgg, m["vgg_infer"])
    parts_option = full_pipeline(models, vgg, m["vgg_infer"], variants[option])
    flops = floor_flops(models, vgg, m["vgg_infer"])
    peak = max(m["peak"]["matmul"], m["peak"]["conv"])
    return dict(vgg=vgg, models=models, variants=variants, option=option,
                parts=parts, parts_option=parts_option,
                total=sum(s for _, s in parts), total_option=sum(s for _, s in parts_option),
                flops=flops, peak=peak, floor=sum(flops) / peak)
