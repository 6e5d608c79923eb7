"""Data-parallel fine-tuning on torch.distributed (gloo, 2 CPU processes), started the standard ways."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from tunelab.distributed import Dist, choose_backend, threads_per_process

# Full fine-tuning (no dropout in the tiny Llama), fp32 (the subprocesses do not see the tests' bf16 patch).
TUNE = ["--method", "full", "--precision", "fp32", "--batch-size", "4", "--lr", "0.01", "--val-fraction", "0.25",
        "--patience", "100"]


@pytest.fixture
def model_dir(tiny_model, tmp_path):
    tiny_model.save(tmp_path / "tiny")
    return tmp_path / "tiny"


@pytest.fixture
def words(tmp_path):
    """32 training words (4 of each of 8 per label, so that batches split unevenly over processes) and a test set."""
    from conftest import NEGATIVE_WORDS, POSITIVE_WORDS

    rows = [{"text": w, "label": "positive"} for w in POSITIVE_WORDS] + [
        {"text": w, "label": "negative"} for w in NEGATIVE_WORDS]
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows * 2))
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ["--train", str(train), "--test", str(test)]


def tunelab(*args):
    return [sys.executable, "-m", "tunelab.cli", *map(str, args)]


def run(command, **kwargs):
    env = {**os.environ, "TUNELAB_DIST_TIMEOUT_S": "60", **kwargs.pop("env", {})}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, **kwargs)


def weights(folder):
    return load_file(str(folder / "model" / "model.safetensors"))


LABEL_ROWS = [13, 14]  # "positive" and "negative" in the tiny word tokenizer (checked in the test below)


def assert_same_weights(a, b):
    """Equal to float tolerance. One exception, by design of the loss: an lm_head row of a token that is never a
    label gets an exactly-zero true gradient (the label log-likelihoods' softmax terms cancel in the cross-entropy
    over labels), and Adam divides that gradient's float noise by its own size, so such rows wander by up to ~lr per
    step in any run whose summation order differs (another thread count as much as another world size)."""
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    for name in first:
        if name == "lm_head.weight":
            assert torch.allclose(first[name][LABEL_ROWS], second[name][LABEL_ROWS], atol=2e-5), name
        else:
            assert torch.allclose(first[name], second[name], atol=2e-5), name


def test_two_processes_train_the_weights_one_process_trains_on_the_same_global_batch(model_dir, words, tmp_path):
    args = ["tune", *words, "--model", model_dir, *TUNE, "--epochs", "2", "--min-steps", "0", "--json"]
    single = run(tunelab(*args, "--out", tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    double = run(tunelab(*args, "--out", tmp_path / "two", "--nproc", "2"))  # torch.distributed.run, 2 x gloo
    assert double.returncode == 0, double.stderr
    assert "starting 2 processes" in double.stderr
    assert double.stderr.count("training: done") == 1  # rank 0 alone shows progress
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    report = json.loads(double.stdout.strip().splitlines()[-1])  # rank 0 alone prints
    training = json.loads((tmp_path / "two" / "tunelab.json").read_text())["training"]
    assert training["distributed"]["world_size"] == 2 and training["distributed"]["backend"] == "gloo"
    assert len(training["distributed"]["tokens_per_s_per_process"]) == 2 and training["distributed"]["tokens_per_s"] > 0
    assert report["method"] == "full" and len(double.stdout.strip().splitlines()) == 1
    assert report["distributed"]["world_size"] == 2
    assert not (tmp_path / "two" / "checkpoints").exists()


def test_a_killed_process_ends_the_job_which_resumes_with_another_world_size(model_dir, words, tmp_path):
    args = ["tune", *words, "--model", model_dir, *TUNE, "--epochs", "30", "--min-steps", "0"]
    reference = run(tunelab(*args, "--out", tmp_path / "reference"))
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "--max-restarts=0", "-m", "tunelab.cli", *map(str, args), "--out", str(out)]
    job = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "TUNELAB_DIST_TIMEOUT_S": "60"})
    deadline = time.monotonic() + 240
    while not (out / "checkpoints" / "latest.json").is_file():  # the first epoch is saved: kill mid-run
        assert job.poll() is None and time.monotonic() < deadline, "the job ended before a checkpoint"
        time.sleep(0.05)
    rank_one = next(p for p in psutil.Process(job.pid).children(recursive=True)
                    if p.environ().get("RANK") == "1" and "tunelab.cli" in " ".join(p.cmdline()))
    rank_one.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    job.communicate(timeout=120)
    assert job.returncode != 0 and time.monotonic() - killed_at < 90  # no hang on the dead peer
    assert not (out / "tunelab.json").exists()  # no artifact, only checkpoints
    progress = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert 1 <= progress["epoch"] < 30
    resumed = run(tunelab(*args, "--out", out, "--resume"))  # one process continues what two began
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(tmp_path / "reference", out)


def test_the_label_rows_are_the_labels(word_tokenizer):
    assert word_tokenizer.convert_tokens_to_ids(["positive", "negative"]) == LABEL_ROWS


def test_a_shard_is_every_world_th_example_and_threads_share_the_cores():
    dist = Dist(rank=1, world=3, backend="gloo")
    assert dist.shard(list(range(8))) == [1, 4, 7] and Dist().shard([1, 2]) == [1, 2]
    assert threads_per_process(2, cores=2) == 1 and threads_per_process(2, cores=16) == 8
    assert threads_per_process(4, cores=2) == 1  # never below one


def test_gpus_get_nccl_beside_gloo_and_processes_sharing_a_gpu_get_gloo():
    # NCCL refuses CPU tensors (the trainers reduce losses and counts on the CPU) and two ranks on one GPU
    assert choose_backend(gpus=2, local_world=2, nccl_available=True) == "cpu:gloo,cuda:nccl"
    assert choose_backend(gpus=1, local_world=2, nccl_available=True) == "gloo"
    assert choose_backend(gpus=0, local_world=2, nccl_available=False) == "gloo"
    assert choose_backend(gpus=4, local_world=2, nccl_available=False) == "gloo"


def test_distillation_in_two_processes_trains_the_student_one_process_trains(model_dir, words, tmp_path):
    teacher = run(tunelab("prompt", *words, "--model", model_dir, "--save", tmp_path / "teacher", "--json"))
    assert teacher.returncode == 0, teacher.stderr
    args = ["distill", *words, "--teacher", tmp_path / "teacher", "--student", "pruned:1", "--epochs", "2",
            "--batch-size", "8", "--precision", "fp32", "--json"]
    single = run(tunelab(*args, "--out", tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    double = run(tunelab(*args, "--out", tmp_path / "two", "--nproc", "2"))
    assert double.returncode == 0, double.stderr
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    training = json.loads((tmp_path / "two" / "tunelab.json").read_text())["training"]
    assert training["distributed"]["world_size"] == 2


EARLY_EXIT = """
import time, torch, torch.distributed as td
from tunelab.distributed import from_env
dist = from_env()
td.all_reduce(torch.ones(1000))
if dist.is_main:
    time.sleep(1.0)  # rank 0 still evaluating while rank 1 has returned and exits
"""


def test_a_rank_that_returns_early_exits_cleanly(tmp_path):
    """A rank that leaves while rank 0 works on used to abort in the interpreter's teardown of the gloo group
    (SIGABRT in about one run in four here; the launcher then killed rank 0). Five runs: all must end with 0."""
    script = tmp_path / "early_exit.py"
    script.write_text(EARLY_EXIT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    for _ in range(5):
        done = run(command, env={"PYTHONPATH": os.getcwd()})
        assert done.returncode == 0 and "terminate called" not in done.stderr, done.stderr[-2000:]
