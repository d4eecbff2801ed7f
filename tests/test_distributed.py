"""More than one machine, proven with local processes on 127.0.0.1 —
MultiWorkerMirroredStrategy training from TF_CONFIG (the chief alone saves the model) and the
third model's keras-tuner search with a chief oracle and two workers. Each multi-process
test is bounded in time, stops by itself and kills whatever it started, even on failure."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from cifar100cnn import artifacts, distributed, tuning
from script_result import result_line, script_env

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
COMMAND = [sys.executable, "-m", "cifar100cnn.distributed"]
SMALL = ["--quick", "--data", "synthetic", "--limit", "400"]  # 400 + 100 synthetic images


def free_ports(count):
    """Ports free on 127.0.0.1 right now (all held open together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_together(jobs, folder, timeout):
    """Start every ``(name, argv, extra_env)`` job at once and wait for all, at most
    ``timeout`` seconds; stop early when one fails. Every process started is killed on the
    way out if still running. Returns ``{name: (returncode, output)}``."""
    started = {}
    try:
        for name, argv, extra in jobs:
            env = script_env(CUDA_VISIBLE_DEVICES="", TQDM_DISABLE="1", **extra)
            log = open(os.path.join(folder, f"{name}.log"), "w")
            started[name] = (subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log,
                                              stderr=subprocess.STDOUT), log)
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p, _ in started.values()):
            if any(p.poll() not in (None, 0) for p, _ in started.values()):
                break  # one failed: the others would wait for it forever
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        for process, log in started.values():
            if process.poll() is None:
                process.kill()
            process.wait()
            log.close()
    results = {}
    for name, (process, _) in started.items():
        with open(os.path.join(folder, f"{name}.log")) as handle:
            results[name] = (process.returncode, handle.read())
    return results


def explain(results):
    return "\n".join(f"--- {name} (exit {code}):\n{text[-2500:]}"
                     for name, (code, text) in results.items())


# ---------------------------------------------------------------------------
# Fast checks of the set-up
# ---------------------------------------------------------------------------

def tf_config(index, workers=2, chief=False):
    cluster = {"worker": [f"host{i}:2222" for i in range(workers)]}
    if chief:
        cluster["chief"] = ["boss:2222"]
    task = {"type": "chief", "index": 0} if index == "chief" else {"type": "worker", "index": index}
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}


def test_chief_is_worker_0_unless_there_is_a_chief():
    assert distributed.is_chief(tf_config(0)) and not distributed.is_chief(tf_config(1))
    assert distributed.is_chief(tf_config("chief", chief=True))
    assert not distributed.is_chief(tf_config(0, chief=True))


@pytest.mark.parametrize("environ, expected", [
    ({}, "TF_CONFIG is not set. On each machine set it"),
    ({"TF_CONFIG": "{not json"}, "TF_CONFIG must hold a cluster and this machine's task"),
    ({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]}})}, "KeyError"),
    (tf_config(2), "IndexError"),
])
def test_bad_tf_config_is_refused_with_what_to_set(environ, expected):
    with pytest.raises(ValueError, match=expected):
        distributed.cluster_spec(environ)


def test_tuner_role_reads_the_keras_tuner_variables():
    assert tuning.tuner_role({}) is None
    base = {"KERASTUNER_ORACLE_IP": "10.0.0.1", "KERASTUNER_ORACLE_PORT": "8000"}
    assert tuning.tuner_role({**base, "KERASTUNER_TUNER_ID": "chief"}) == "chief"
    assert tuning.tuner_role({**base, "KERASTUNER_TUNER_ID": "tuner1"}) == "worker"
    with pytest.raises(ValueError, match=r"\['KERASTUNER_TUNER_ID'\] not; set all of"):
        tuning.tuner_role(base)


def test_distributed_search_without_the_variables_says_what_to_set(monkeypatch):
    for name in tuning.TUNER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="set KERASTUNER_TUNER_ID, KERASTUNER_ORACLE_IP"):
        distributed.search(data=None)


@pytest.mark.parametrize("command", ["train", "search"])
def test_command_without_its_variables_exits_with_one_clear_line(command, monkeypatch, capsys):
    for name in ("TF_CONFIG",) + tuning.TUNER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert distributed.main([command, *SMALL]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"python -m cifar100cnn.distributed {command}: ")
    assert ("TF_CONFIG is not set" if command == "train" else "set KERASTUNER_TUNER_ID") in error


def test_every_option_of_both_commands_has_help():
    commands = next(action for action in distributed.build_parser()._actions
                    if action.dest == "command").choices
    missing = [(name, action.dest) for name, command in commands.items()
               for action in command._actions if action.dest != "help" and not action.help]
    assert sorted(commands) == ["search", "train"] and missing == []


def test_limit_cuts_the_data_for_smoke_tests():
    args = distributed.parse_args(["train", "--model", "baseline", *SMALL])
    dataset = distributed.load_data(args)
    assert (len(dataset.x_train), len(dataset.y_train), len(dataset.x_val)) == (400, 400, 100)


@pytest.mark.parametrize("preset", ["robust", "tuned"])
def test_third_trains_the_recipe_of_its_preset_by_default_the_committed_models(preset):
    args = distributed.parse_args(["train", *SMALL] + (["--third-preset", preset] if preset == "tuned" else []))
    assert args.third_preset == preset
    build, recipe_name = distributed.builder("third", distributed.load_data(args), args.third_preset)
    assert recipe_name == f"third_{preset}"
    names = [layer.name for layer in build().layers]
    # Only the robust recipe standardizes each image on its own (input_norm "image").
    assert ("standardize_image" in names) == (preset == "robust"), names


# ---------------------------------------------------------------------------
# Two worker processes on 127.0.0.1
# ---------------------------------------------------------------------------

@pytest.mark.slow
def test_multi_worker_training_on_two_local_processes_saves_on_the_chief_only(tmp_path):
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    jobs = []
    for index in range(2):
        (tmp_path / f"out{index}").mkdir()
        (tmp_path / f"tmp{index}").mkdir()
        config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        jobs.append((f"worker{index}", COMMAND + [
            "train", "--model", "baseline", "--epochs", "2", "--precision", "float32",
            "--out", str(tmp_path / f"out{index}"), *SMALL],
            {"TF_CONFIG": config, "TMPDIR": str(tmp_path / f"tmp{index}")}))
    results = run_together(jobs, tmp_path, timeout=540)
    assert all(code == 0 for code, _ in results.values()), explain(results)
    chief, other = (result_line(results[f"worker{i}"][1]) for i in range(2))
    assert chief.startswith("RESULT baseline: 2 epoch(s), best val_accuracy ")
    assert chief.endswith(f"saved {artifacts.model_path('baseline', tmp_path / 'out0' / 'models')}")
    assert other.endswith("not saved here (the chief saves it)")
    assert chief.split(";")[0] == other.split(";")[0]  # the same training on both
    model = artifacts.load_model(artifacts.model_path("baseline", tmp_path / "out0" / "models"))
    assert {w.dtype for w in model.weights} == {"float32"}
    assert not (tmp_path / "out1" / "models").exists()  # the other worker wrote nothing
    assert list((tmp_path / "tmp1").iterdir()) == []  # and removed its checkpoints and logs


@pytest.mark.slow
def test_keras_tuner_search_with_a_chief_and_two_local_workers(tmp_path):
    (port,) = free_ports(1)
    common = COMMAND + ["search", "--budget", "2", "--epochs", "2", "--widths", "8", "16",
                        "--directory", str(tmp_path / "tuner"),
                        "--results", str(tmp_path / "results.json"), *SMALL]
    oracle = {"KERASTUNER_ORACLE_IP": "127.0.0.1", "KERASTUNER_ORACLE_PORT": str(port)}
    jobs = [(name, common, {**oracle, "KERASTUNER_TUNER_ID": name})
            for name in ("chief", "tuner0", "tuner1")]
    results = run_together(jobs, tmp_path, timeout=540)
    assert all(code == 0 for code, _ in results.values()), explain(results)
    assert result_line(results["chief"][1]).startswith("RESULT best of 2 trial(s): {")
    for worker in ("tuner0", "tuner1"):
        assert result_line(results[worker][1]) == ("RESULT worker done: the tuner chief holds "
                                                   "the results.")
        assert (tmp_path / "tuner" / "third_model" / f"{worker}.json").exists()
    trials = json.loads((tmp_path / "results.json").read_text())
    assert len(trials) == 2 and all(t["preset"] in ("tuned", "original") for t in trials)
    assert all(t.get("width", 8) in (8, 16) for t in trials)
    assert "Epoch 1/2" not in results["chief"][1]  # the chief trains nothing
