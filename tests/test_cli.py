"""The tfvae command line, through click's CliRunner."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from tfvae_cli.main import cli


@pytest.fixture
def runner():
    return CliRunner()


def test_help_is_fast_and_lists_commands():
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "tfvae_cli.main", "--help"],
                            capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    for command in ("train", "evaluate", "sample"):
        assert command in result.stdout
    # --help must not import TensorFlow (that alone takes seconds).
    probe = subprocess.run(
        [sys.executable, "-c",
         "import sys; from tfvae_cli.main import cli; import tfvae; "
         "print('tensorflow' in sys.modules)"],
        capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "False", probe.stderr
    assert elapsed < 30  # generous: a loaded CI machine; typically well under a second


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help_with_examples(runner, command):
    result = runner.invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.output and "--verbose" in result.output


def test_programming_errors_keep_their_traceback(runner, tmp_path, monkeypatch):
    """Only errors a user can cause become one-line messages."""
    import tfvae.runs.layout

    def broken(*args, **kwargs):
        raise TypeError("a bug, not a user error")

    monkeypatch.setattr(tfvae.runs.layout, "check_run_dir", broken)
    result = runner.invoke(cli, ["evaluate", str(tmp_path)])
    assert result.exit_code != 0 and isinstance(result.exception, TypeError)


def test_an_interrupt_says_what_was_kept_without_calling_it_an_error(runner, tmp_path,
                                                                    monkeypatch):
    import tfvae.training
    from tfvae.errors import Interrupted

    said = "interrupted after 3 of 9 epochs, all saved in run; continue with: ..."

    def stopped(*args, **kwargs):
        raise Interrupted(said)

    monkeypatch.setattr(tfvae.training, "train", stopped)
    result = runner.invoke(cli, ["train", "--out", str(tmp_path / "run")])
    assert result.exit_code == 130 and result.output.splitlines()[-1] == said


def test_train_evaluate_sample_end_to_end(runner, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(cli, ["train", "--epochs", "1", "--hidden", "32", "--latent-dim", "2",
                                 "--iwae-k", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "test elbo" in result.output
    # Progress in images and images/s, whatever the training path (not Keras' blocks).
    assert "epoch 1/1: 8,550 images in" in result.output and "images/s" in result.output
    for name in ("config.json", "run.json", "metrics.csv", "metrics.json", "evaluation.json",
                 "checkpoints/last.weights.h5", "checkpoints/best.weights.h5",
                 "figures/samples.png", "figures/reconstructions.png", "figures/manifold.png",
                 "figures/latent.png", "figures/curves.png"):
        assert (out / name).exists(), name
    assert any((out / "tensorboard").rglob("events.out.tfevents.*"))

    result = runner.invoke(cli, ["evaluate", str(out), "--k", "7", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["k"] == 7 and report["n"] == 1000
    assert report["reconstruction"] > 0 and len(report["kl_per_dim"]) == 2
    for key in ("elbo", "kl", "log_likelihood", "active_units"):
        assert key in report

    result = runner.invoke(cli, ["evaluate", str(out), "--k", "3"])
    assert result.exit_code == 0 and "log_likelihood" in result.output

    npy = tmp_path / "s.npy"
    result = runner.invoke(cli, ["sample", str(out), "--n", "5", "--out", str(npy), "--seed", "4"])
    assert result.exit_code == 0, result.output
    images = np.load(npy)
    assert images.shape == (5, 784) and 0 <= images.min() and images.max() <= 1
    result = runner.invoke(cli, ["sample", str(out), "--n", "5", "--out", str(npy)])
    assert result.exit_code != 0 and "--overwrite" in result.output
    png = tmp_path / "s.png"
    result = runner.invoke(cli, ["sample", str(out), "--n", "9", "--out", str(png)])
    assert result.exit_code == 0 and png.read_bytes()[:4] == b"\x89PNG"

    # Refuses to train into an existing run.
    before = (out / "config.json").read_text()
    result = runner.invoke(cli, ["train", "--epochs", "1", "--out", str(out)])
    assert result.exit_code != 0 and "never overwrites" in result.output
    assert (out / "config.json").read_text() == before


@pytest.mark.parametrize(
    "args, words",
    [
        (["train", "--latent-dim", "0"], "--latent-dim"),
        (["train", "--hidden", "0"], "positive"),
        (["train", "--batch-size", "100000", "--epochs", "1"], "larger than"),
        (["train", "--model", "gan"], "gan"),
        (["train", "--estimator", "magic"], "magic"),
        (["train", "--dataset", "mnist-10k", "--data-dir", "x"], "not both"),
        (["train", "--data-dir", "/nonexistent/dir"], "/nonexistent/dir"),
        (["train", "--components", "many"], "auto"),
        (["evaluate", "/nonexistent/run"], "does not exist"),
        (["sample", "/nonexistent/run", "--out", "x.png"], "does not exist"),
        (["sample", "/nonexistent/run", "--out", "x.gif"], ".png or .npy"),
    ],
)
def test_bad_input_gives_a_clear_error(runner, tmp_path, args, words):
    args = [str(tmp_path / a) if a == "x" else a for a in args]
    extra = ["--out", str(tmp_path / "r")] if args[0] == "train" else []
    result = runner.invoke(cli, args + extra)
    assert result.exit_code != 0
    assert words in result.output, result.output
    assert "Traceback" not in result.output


def test_run_directory_problems(runner, tmp_path, tiny_run):
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    result = runner.invoke(cli, ["evaluate", str(not_a_run)])
    assert result.exit_code != 0 and "not a tfvae run" in result.output

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{oops")
    result = runner.invoke(cli, ["evaluate", str(broken)])
    assert result.exit_code != 0 and "corrupt" in result.output

    no_ckpt = tmp_path / "nockpt"
    no_ckpt.mkdir()
    (no_ckpt / "config.json").write_text((tiny_run / "config.json").read_text())
    result = runner.invoke(cli, ["sample", str(no_ckpt), "--out", str(tmp_path / "a.png")])
    assert result.exit_code != 0 and "never finished an epoch" in result.output

    bad_ckpt = tmp_path / "badckpt"
    (bad_ckpt / "checkpoints").mkdir(parents=True)
    (bad_ckpt / "config.json").write_text((tiny_run / "config.json").read_text())
    (bad_ckpt / "checkpoints" / "best.weights.h5").write_bytes(b"not hdf5")
    result = runner.invoke(cli, ["evaluate", str(bad_ckpt)])
    assert result.exit_code != 0 and "cannot be read" in result.output


#: The tfvae command with TensorFlow unimportable: what it refuses this way is
#: refused before importing it.
WITHOUT_TENSORFLOW = ("import sys; sys.modules['tensorflow'] = None; "
                      "from tfvae_cli.main import main; sys.argv = ['tfvae'] + sys.argv[1:]; "
                      "main()")


@pytest.mark.parametrize(
    "args, words",
    [
        (["train", "--epochs", "1", "--out", "{run}"], "already holds a tfvae run"),
        (["evaluate", "{missing}"], "does not exist"),
        (["export", "{run}", "--out", "{other}"], "not a tfvae export"),
        (["export", "{run}", "--out", "{other}", "--overwrite"], "not a tfvae export"),
        (["sample", "{missing}", "--out", "{png}"], "does not exist"),
        (["train", "--data-dir", "{missing}", "--out", "{fresh}"], "data path"),
    ],
)
def test_refusals_come_before_tensorflow_is_imported(tiny_run, tmp_path, args, words):
    """Path checks need no TensorFlow: with it unimportable, they still answer."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    values = {"run": tiny_run, "missing": tmp_path / "nope", "other": other,
              "png": tmp_path / "s.png", "fresh": tmp_path / "fresh"}
    argv = [a.format(**values) for a in args]
    done = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, *argv],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert words in done.stderr and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert (other / "notes.txt").read_text() == "keep me"
    assert not (tmp_path / "fresh").exists()


def test_a_second_writer_is_refused_before_tensorflow_is_imported(tiny_run, tmp_path, hold_lock):
    """`train --resume` of a run another process holds: refused at once, nothing said first."""
    import shutil

    run = tmp_path / "held"
    shutil.copytree(tiny_run, run)
    with hold_lock(run) as pid:
        done = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, "train", "--resume",
                               str(run)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"in use by tfvae process {pid}" in done.stderr, done.stderr[-2000:]
    assert "resuming" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_commands_are_quiet_by_default(tiny_run, tmp_path):
    """No TensorFlow/LiteRT native log lines unless -v asks for them."""
    done = subprocess.run([sys.executable, "-m", "tfvae_cli.main", "evaluate", str(tiny_run),
                           "--k", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for noise in ("I0000", "E0000", "cuda", "absl::InitializeLog", "XNNPACK", "WARNING:"):
        assert noise not in done.stderr, done.stderr


def test_evaluation_progress_is_shown_for_long_evaluations(capsys):
    from tfvae_cli.common import EvaluationProgress

    progress = EvaluationProgress(after=0.0, every=0.0)
    for done in (100, 200, 300):
        progress("evaluate", done, 300)
    err = capsys.readouterr().err
    assert "evaluate: 300/300 examples" in err and "left" in err



def test_only_the_console_script_freezes_the_collector(runner, tmp_path, monkeypatch):
    import atexit
    import gc

    from tfvae_cli import main as cli_main

    import tfvae.training
    from tfvae.errors import ConfigError

    frozen = []

    def fake_train(*args, **kwargs):
        frozen.append(gc.get_freeze_count())
        raise ConfigError("stop here")

    monkeypatch.setattr(tfvae.training, "train", fake_train)
    monkeypatch.setattr(cli_main, "_OWN_PROCESS", False)
    gc.unfreeze()
    # Inside another program (CliRunner here) its objects are left alone.
    result = runner.invoke(cli, ["train", "--out", str(tmp_path / "a")])
    assert result.exit_code == 1 and "stop here" in result.output
    monkeypatch.setattr(sys, "argv", ["tfvae", "train", "--out", str(tmp_path / "b")])
    try:
        with pytest.raises(SystemExit) as stop:
            cli_main.main()
        assert stop.value.code == 1
    finally:
        atexit.unregister(gc.freeze)
        gc.unfreeze()
    assert frozen[0] == 0 and frozen[1] > 0
