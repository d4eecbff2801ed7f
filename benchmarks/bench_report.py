"""The benchmark's report: Markdown tables from the measurements and their estimates, set
into the prose of the template ``bench_report.md`` (``string.Template``)."""

import os
import string

from bench_estimate import N_TRAIN, N_VAL, TRAINING_PASSES, estimate

TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_report.md")


def fmt(value, digits=1):
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def fmt_duration(seconds):
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def goal_cell(ratio, goal, higher_is_better=True):
    met = ratio >= goal if higher_is_better else ratio <= goal
    sign = "≥" if higher_is_better else "≤"
    return f"{sign} {goal:g}× — {'met' if met else 'NOT met'}"


def pipeline_goal_cell(seconds, gpus):
    """The pipeline's time targets: 90 minutes on 2 CPU cores; 10 minutes on one H100."""
    if gpus:
        return f"≤ 10 min (one H100) — {'met' if seconds <= 600 else 'NOT met'}"
    return f"≤ 90 min (2 CPU cores) — {'met' if seconds <= 5400 else 'NOT met'}"


def summary_table(m, e):
    vgg, aug, memory, full, gpus = e["vgg"], m["aug"], m["memory"], m["full"], m["context"]["gpus"]
    per_epoch = vgg["original"]["epoch_s"] / vgg["head"]["epoch_s"]
    per_epoch_before = vgg["original"]["epoch_s"] / vgg["head_before"]["epoch_s"]
    stage = vgg["original_stage_s"] / vgg["ours_stage_s"]
    aug_ratio = aug["ours_ips"] / aug["legacy_ips"]
    aug_before = aug["before_ips"] / aug["legacy_ips"]
    mem_ratio = memory["ours"]["data"] / memory["original"]["data"]
    mem_arrays = memory["ours, arrays only"]["data"] / memory["original"]["data"]
    rows = [
        ["VGG16 transfer, one epoch (40k train + 10k val)",
         fmt_duration(vgg["original"]["epoch_s"]) + " (est.)", fmt_duration(vgg["head"]["epoch_s"]),
         f"{per_epoch:,.0f}×", f"{per_epoch_before:,.0f}× (one batch per call)", goal_cell(per_epoch, 100)],
        [f"VGG16 stage, {vgg['epochs']} epochs (features once + head)",
         fmt_duration(vgg["original_stage_s"]) + " (est.)", fmt_duration(vgg["ours_stage_s"]) + " (est.)",
         f"{stage:,.0f}×", "", ""],
        ["Augmentation input pipeline (images/s)", fmt(aug["legacy_ips"]), fmt(aug["ours_ips"]),
         f"{aug_ratio:.1f}×", f"{aug_before:.1f}× (three Keras layers)", goal_cell(aug_ratio, 5)],
        ["Peak RSS added by the data (MiB)", fmt(memory["original"]["data"]), fmt(memory["ours"]["data"]),
         f"{mem_ratio:.2f}×", f"arrays alone: {mem_arrays:.2f}×",
         goal_cell(mem_ratio, 0.25, higher_is_better=False)],
        ["Full default pipeline (est.)", "", fmt_duration(e["total"]), "",
         f"{fmt_duration(e['total_option'])} with third_tuned {e['option']} (option)",
         pipeline_goal_cell(e["total"], gpus)],
        *([["Full default pipeline, measured", "", fmt_duration(full["seconds"]), "", "",
            pipeline_goal_cell(full["seconds"], gpus)]] if full and full["seconds"] else []),
        ["Floor: its FLOPs at this machine's measured peak", "", fmt_duration(e["floor"]), "",
         f"peak {e['peak'] / 1e9:,.0f} GFLOP/s ({m['peak']['dtype']})",
         "" if gpus else
         f"90 min {'reachable' if e['floor'] <= 5400 else 'out of reach'} here even at 100% of peak"],
    ]
    return table(["What", "Original way", "Ours (package)", "Ratio", "For reference", "Goal"], rows)


def vgg16_table(vgg):
    o, x, h, hb = vgg["original"], vgg["extraction"], vgg["head"], vgg["head_before"]
    rows = [
        ["Original: train phase", f"{o['n_train']} images", fmt(o["phases"]["train"], 2),
         fmt(o["n_train"] / o["phases"]["train"]), fmt_duration(o["phases"]["train"] * N_TRAIN / o["n_train"])],
        ["Original: validation phase", f"{o['n_val']} images", fmt(o["phases"]["val"], 2),
         fmt(o["n_val"] / o["phases"]["val"]), fmt_duration(o["phases"]["val"] * N_VAL / o["n_val"])],
        ["Ours: features, `predict_in_batches` (once)", f"{x['n']} images", fmt(x["per_image"] * x["n"], 2),
         fmt(1 / x["per_image"]), fmt_duration(vgg["extract_s"]) + " for 50k"],
        ["Ours: features, `model.predict(batch_size=500)`", f"{x['n']} images",
         fmt(x["per_image_predict"] * x["n"], 2), fmt(1 / x["per_image_predict"]),
         fmt_duration(x["per_image_predict"] * (N_TRAIN + N_VAL)) + " for 50k"],
        ["Ours: head epoch on cached features (`steps_per_execution=50`)", "40,000 + 10,000 (no scaling)",
         fmt(h["epoch_s"], 2), fmt(N_TRAIN / h["phases"]["train"]), fmt_duration(h["epoch_s"])],
        ["For reference: head epoch, one batch per call", "40,000 + 10,000 (no scaling)",
         fmt(hb["epoch_s"], 2), fmt(N_TRAIN / hb["phases"]["train"]), fmt_duration(hb["epoch_s"])],
    ]
    return table(["Step", "Measured on", "Median s", "Images/s", "Full size"], rows)


def augmentation_table(aug):
    return table(["Pipeline", "Images/s"],
                 [[aug["legacy_name"], fmt(aug["legacy_ips"])],
                  ["Ours (tf.data + one fused affine transform)", fmt(aug["ours_ips"])],
                  ["For reference: tf.data + three Keras layers", fmt(aug["before_ips"])]])


def memory_table(memory):
    return table(["Way", "Peak after imports (MiB)", "Peak (MiB)", "Added by the data (MiB)"],
                 [[way, fmt(m["baseline"]), fmt(m["peak"]), fmt(m["data"])] for way, m in memory.items()])


def models_table(models, vgg, vgg_infer, variants):
    rows = [[m["name"], m["epochs"], f"{m['n_train']:,}", fmt(m["train_ips"]), fmt(m["phases"]["callbacks"], 2),
             fmt_duration(m["epoch_s"]), fmt(m["infer_ips"]), fmt(m["predict_ips"])] for m in models]
    head = vgg["head"]
    rows.append(["vgg16 (head on cached features)", vgg["epochs"], "40,000",
                 fmt(N_TRAIN / head["phases"]["train"]), fmt(head["phases"]["callbacks"], 2),
                 fmt_duration(head["epoch_s"]), fmt(vgg_infer["infer_ips"]), fmt(vgg_infer["predict_ips"])])
    rows += [[f"*option: third_tuned, {label}*", v["epochs"], f"{v['n_train']:,}", fmt(v["train_ips"]),
              fmt(v["phases"]["callbacks"], 2), fmt_duration(v["epoch_s"]), "", ""]
             for label, v in variants.items() if not v["package"]]
    header = ["Model", "Default epochs", "Timed on (train images)", "Train images/s", "Callbacks s/epoch",
              "Per 40k+10k epoch", "Inference img/s (`predict_in_batches`)", "Inference img/s (`model.predict`)"]
    return table(header, rows)


def pipeline_table(e):
    rows = [[name, fmt_duration(seconds), fmt_duration(option)]
            for (name, seconds), (_, option) in zip(e["parts"], e["parts_option"])]
    rows.append(["**Total (estimate)**", f"**{fmt_duration(e['total'])}**",
                 f"**{fmt_duration(e['total_option'])}**"])
    header = ["Stage (default epochs, synthetic data of full size)", "Package (default recipes)",
              f"With third_tuned {e['option']} (option)"]
    return table(header, rows)


def cli_line(cli):
    return ("`python -m cifar100cnn run --quick --data synthetic --vgg16-weights none`: "
            + (f"**{fmt_duration(cli['seconds'])}** wall time, measured." if cli["seconds"]
               else cli["note"] + "."))


def full_pipeline_line(full):
    if full is None:
        return ("The whole default pipeline at full size was not run (add `--full-pipeline`; "
                "hours on a CPU).")
    if full["seconds"] is None:
        return f"The whole default pipeline at full size: {full['note']}."
    return (f"`{full['command']}` (the whole default pipeline, synthetic data of full size): "
            f"**{fmt_duration(full['seconds'])}** wall time, measured ("
            + "; ".join(full["notebooks"]) + ").")


def floor_table(models, vgg_infer, e):
    per_image = [m["forward_flops"] for m in models] + [vgg_infer["forward_flops"] - vgg_infer["head_flops"],
                                                         vgg_infer["head_flops"], None]
    peak = e["peak"]
    rows = [[stage, f"{forward / 1e6:,.1f}" if forward else "", f"{total / 1e12:,.1f}",
             fmt_duration(total / peak), fmt_duration(seconds), f"{total / peak / seconds:.0%}"]
            for (stage, seconds), forward, total in zip(e["parts"], per_image, e["flops"])]
    rows.append(["**Total**", "", f"**{sum(e['flops']) / 1e12:,.0f}**", f"**{fmt_duration(e['floor'])}**",
                 f"**{fmt_duration(e['total'])}**", f"**{e['floor'] / e['total']:.0%}**"])
    header = ["Stage (default epochs)", "Forward MFLOP per image", "TFLOP in all",
              "Floor at peak", "Estimate (section 5)", "Efficiency (floor / estimate)"]
    return table(header, rows)


def render(measurements):
    """The Markdown report of one benchmark run.

    Args:
        measurements: the dict of ``bench_measure.measure_all``.

    Returns:
        The report's text, from the template ``bench_report.md``.
    """
    m, e = measurements, estimate(measurements)
    context, peak = m["context"], m["peak"]
    with open(TEMPLATE, encoding="utf-8") as handle:
        template = string.Template(handle.read())
    return template.substitute(
        date=context["date"], command=context["command"], mode=context["mode"],
        machine=context["machine"], libraries=context["libraries"], hardware=context["hardware"],
        elapsed=fmt_duration(context["elapsed"]), repeats=context["repeats"],
        load_start=f"{context['load'][0]:.2f}", load_end=f"{context['load'][1]:.2f}",
        cores=context["cores"],
        summary_table=summary_table(m, e),
        vgg_epochs=e["vgg"]["epochs"], vgg16_table=vgg16_table(e["vgg"]),
        aug_images=f"{m['aug']['n']:,}", legacy_name=m["aug"]["legacy_name"],
        augmentation_table=augmentation_table(m["aug"]),
        memory_table=memory_table(m["memory"]),
        infer_images=f"{context['infer']:,}", vgg_infer_images=f"{context['vgg_infer']:,}",
        models_table=models_table(e["models"], e["vgg"], m["vgg_infer"], e["variants"]),
        option=e["option"], pipeline_table=pipeline_table(e), cli_line=cli_line(m["cli"]),
        full_pipeline_line=full_pipeline_line(m["full"]),
        training_passes=TRAINING_PASSES, dtype=peak["dtype"], matmul_n=peak["matmul_n"],
        matmul_gflops=f"{peak['matmul'] / 1e9:,.0f}", conv_gflops=f"{peak['conv'] / 1e9:,.0f}",
        floor_table=floor_table(e["models"], m["vgg_infer"], e))
