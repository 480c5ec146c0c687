"""Training under tf.distribute: MirroredStrategy over two logical CPU devices
and MultiWorkerMirroredStrategy with two local worker processes.

Logical devices and multi-worker clusters must be set up before TensorFlow
starts, so each run happens in a fresh subprocess (tests/distribute_worker.py)
with a timeout.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfvae import runs
from tfvae.config import Config
from tfvae.errors import ConfigError

WORKER = Path(__file__).with_name("distribute_worker.py")
TIMEOUT = 240

# Mirrored and single-device runs agree only statistically: each replica draws
# its own noise (its own stream of the model's generator) and gradients are
# summed in another order, so after 2 epochs the numbers drift apart by a
# fraction of a nat (measured: < 0.6). 5 nats is far below what a wrong loss
# scaling (gradients 2x) or metrics summed over replicas (2x the loss) gives.
TOLERANCE_NATS = 5.0


@pytest.fixture(scope="module")
def tiny_npy(tmp_path_factory):
    """640 MNIST digits from the embedded data as one .npy (576 train, 64 test rows)."""
    from tfvae import data

    path = tmp_path_factory.mktemp("data") / "tiny.npy"
    np.save(path, data.load_dataset("mnist-10k").x_train[:640])
    return path


def _run(args, env=None, timeout=TIMEOUT):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(proc, timeout=TIMEOUT):
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        pytest.fail(f"worker timed out after {timeout} s:\n{output[-3000:]}")
    assert proc.returncode == 0, output[-3000:]
    return output


def test_strategy_is_validated():
    assert Config().strategy == "default"
    assert Config(strategy="mirrored").strategy == "mirrored"
    with pytest.raises(ConfigError, match="default, mirrored, multiworker"):
        Config(strategy="tpu")


def test_default_strategy_is_chief():
    from tfvae import distribute

    assert distribute.is_chief(distribute.make_strategy("default"))
    with distribute.scratch_dir() as scratch:
        assert scratch is None


@pytest.mark.slow
def test_mirrored_matches_single_device_and_resumes(tiny_npy, tmp_path):
    result = tmp_path / "result.json"
    _wait(_run(["mirrored", tiny_npy, tmp_path / "runs", result]))
    results = json.loads(result.read_text())
    for model in ("gaussian", "bernoulli"):
        one, two = results[f"{model}-default"], results[f"{model}-mirrored"]
        assert (one["replicas"], two["replicas"]) == (1, 2)
        assert abs(one["loss"] - two["loss"]) < TOLERANCE_NATS, (model, one, two)
        assert abs(one["test_elbo"] - two["test_elbo"]) < TOLERANCE_NATS, (model, one, two)
    # The moving-average baseline is updated from the global batch: one value everywhere.
    baseline = results["bernoulli-mirrored"]["baseline"]
    assert len(baseline) == 2 and baseline[0] == baseline[1]
    resumed = results["bernoulli-resumed"]
    assert resumed["epochs"] == 3 and resumed["replicas"] == 2
    assert resumed["baseline"][0] == resumed["baseline"][1]


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_multiworker_two_processes(tiny_npy, tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    out = tmp_path / "run"  # the same --out on both, as on a shared file system
    procs = []
    for index in range(2):
        scratch = tmp_path / f"tmp-{index}"
        scratch.mkdir()
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        procs.append(_run(["multiworker", tiny_npy, out, tmp_path / f"weights-{index}.npz"],
                          env={"TF_CONFIG": json.dumps(tf_config), "TMPDIR": str(scratch)}))
    for proc in procs:
        _wait(proc)
    chief, other = (np.load(tmp_path / f"weights-{i}.npz") for i in range(2))
    assert (str(chief["role"]), str(other["role"])) == ("chief", "worker 1")
    weights = [name for name in chief.files if name != "role"]
    assert sorted(weights) == sorted(n for n in other.files if n != "role") and weights
    for name in weights:
        np.testing.assert_array_equal(chief[name], other[name])
    # The chief wrote the run; the other worker's checkpoint copies are gone.
    assert (out / runs.EVALUATION).is_file()
    assert (out / runs.CHECKPOINTS / runs.BEST).is_file()
    assert json.loads((out / runs.STATUS).read_text())["status"] == "completed"
    assert not list((tmp_path / "tmp-1").glob("tfvae-worker-*"))
    # Validation is the mean over all validation rows, not a sum over workers:
    # the same as evaluating the final weights in one process.
    from tfvae.runs.run_data import load_data
    from tfvae.runs.store import load_config, load_model

    model, _ = load_model(out, "last", extras=False)
    config = load_config(out)
    _, splits = load_data(config)
    model.compile(optimizer="adam")
    alone = model.evaluate(splits.val, batch_size=64, verbose=0, return_dict=True)
    history = json.loads((out / runs.METRICS_JSON).read_text())
    assert history[-1]["val_loss"] == pytest.approx(alone["loss"], rel=1e-4)
    assert history[-1]["val_reconstruction"] == pytest.approx(alone["reconstruction"], rel=1e-4)


@pytest.mark.slow
def test_mirrored_on_one_device_trains_with_keras_loop(tiny_npy, tmp_path):
    """One replica is still a strategy: no fused blocks under it, for tfvae.train or fit."""
    result = tmp_path / "result.json"
    _wait(_run(["onedevice", tiny_npy, tmp_path / "run", result]))
    seen = json.loads(result.read_text())
    assert seen["replicas"] == 1 and seen["run_status"] == "completed"
    assert np.isfinite(seen["user_fit_loss"])


def test_fused_blocks_refuse_a_strategy_with_a_clear_message(make_model):
    import tfvae
    from tfvae._keras import tf

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = make_model("gaussian", latent_dim=2, hidden=(8,))
        model.compile(optimizer="adam", steps_per_execution=1)
    blocks = tfvae.data.blocks(np.zeros((64, 784), np.float32), batch_size=32)
    with pytest.raises(Exception, match="fused training blocks run outside tf.distribute"):
        model.fit(blocks.dataset, steps_per_epoch=1, verbose=0)


@pytest.mark.slow
def test_multiworker_from_the_command_line_every_worker_says_what_it_did(tiny_npy, tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    out = tmp_path / "run"
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_CONFIG": json.dumps(tf_config)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tfvae_cli.main", "train", "--strategy", "multiworker",
             "--data-dir", str(tiny_npy), "--epochs", "1", "--hidden", "16", "--latent-dim",
             "2", "--iwae-k", "2", "--batch-size", "64", "--out", str(out)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, stderr[-3000:]
        assert "Traceback" not in stderr
        outputs.append(stdout.strip().splitlines())
    chief, other = (lines[-1] for lines in outputs)  # after the per-epoch progress lines
    assert chief.startswith("done: test elbo") and str(out) in chief, outputs
    assert other.startswith("worker 1: took part in training") and str(out) in other, outputs


def test_cli_train_has_strategy_option():
    from click.testing import CliRunner
    from tfvae_cli.main import cli

    result = CliRunner().invoke(cli, ["train", "--help"])
    assert result.exit_code == 0, result.output
    assert "--strategy [default|mirrored|multiworker]" in result.output
    result = CliRunner().invoke(cli, ["train", "--strategy", "tpu"])
    assert result.exit_code != 0 and "tpu" in result.output
