"""The tfvae command line, through click's CliRunner.

Commands run in-process on the session's trained run. What belongs to a
process runs in one: the installed console script (``tfvae --help`` without
TensorFlow; in the slow suite a real ``tfvae train`` with its quiet stderr)
and what the commands do without TensorFlow (help and refusals, all in one
fresh interpreter where importing TensorFlow fails).
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from tfvae_cli.main import cli


@pytest.fixture
def runner():
    return CliRunner()


# ---------------------------------------------------------------- the console script


def _console_script():
    script = shutil.which("tfvae", path=str(Path(sys.executable).parent)) or shutil.which("tfvae")
    assert script, "the tfvae console script is not installed (pip install -e .)"
    return script


def test_the_console_script_answers_help_without_importing_tensorflow():
    """The installed ``tfvae --help``: exit code 0, the commands, and (from Python's own
    import log) no TensorFlow, whose import alone takes seconds."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    done = subprocess.run([_console_script(), "--help"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    for command in ("train", "evaluate", "sample", "export", "diagnose"):
        assert command in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                if line.startswith("import time:")}
    assert "click" in imported and "tfvae_cli.main" in imported  # the log is there
    assert not {m for m in imported if m.split(".")[0] in ("tensorflow", "tf_keras")}


@pytest.fixture(scope="module")
def small_npy(tmp_path_factory):
    """640 embedded MNIST digits as one .npy (a run on it trains and evaluates in moments)."""
    from tfvae import data

    path = tmp_path_factory.mktemp("data") / "small.npy"
    np.save(path, data.load_dataset("mnist-10k").x_train[:640])
    return path


#: What TensorFlow and LiteRT print on their own (CUDA probing, oneDNN and
#: XNNPACK notices, absl's preamble) when nothing quiets them.
NATIVE_NOISE = ("I0000", "E0000", "W0000", "cuda", "oneDNN", "absl::InitializeLog", "XNNPACK",
                "WARNING:")


@pytest.mark.slow
def test_the_console_script_trains_and_keeps_native_logs_quiet(small_npy, tmp_path):
    """The installed ``tfvae train`` in its own process: its progress, its report, exit
    code 0, and none of TensorFlow's native log lines (the environment does not quiet
    them here). A process of its own: those lines go straight to descriptor 2."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run(
        [_console_script(), "train", "--data-dir", str(small_npy), "--epochs", "1", "--hidden",
         "16", "--latent-dim", "2", "--iwae-k", "2", "--batch-size", "64", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    # Progress in images and images/s on the fused path, not Keras' batch bars.
    assert re.match(r"epoch 1/1: \d+ images in .* images/s", lines[0]), lines
    assert lines[-1].startswith("done: test elbo") and f"run in {out}" in lines[-1], lines
    assert done.stderr.startswith(f"training gaussian model; run directory: {out}\n")
    for noise in NATIVE_NOISE:
        assert noise not in done.stderr, done.stderr
    assert json.loads((out / "run.json").read_text())["status"] == "completed"


def test_native_log_lines_are_hidden_unless_verbose(runner, tmp_path, monkeypatch, capfd):
    """Descriptor 2 (where C++ logs go) is silenced for a command; -v lets it through."""
    import tfvae.runs.layout
    from tfvae.errors import RunDirError

    def noisy(run_dir):
        os.write(2, b"I0000 a native log line\n")
        raise RunDirError("stop here")

    monkeypatch.setattr(tfvae.runs.layout, "check_run_dir", noisy)
    result = runner.invoke(cli, ["evaluate", str(tmp_path)])
    assert result.exit_code == 1 and "stop here" in result.output
    assert "a native log line" not in capfd.readouterr().err
    result = runner.invoke(cli, ["evaluate", str(tmp_path), "-v"])
    assert result.exit_code == 1 and "stop here" in result.output
    assert "a native log line" in capfd.readouterr().err


# ---------------------------------------------------------------- without TensorFlow


#: Runs tfvae commands through CliRunner in a fresh interpreter where importing
#: TensorFlow fails, and prints what each did and whether it tried to import it.
WITHOUT_TENSORFLOW = """
import importlib.abc, json, sys

tried = []

class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] == "tensorflow":
            tried.append(name)
            raise ImportError("TensorFlow is not importable in this test")

sys.meta_path.insert(0, NoTensorFlow())
import tfvae
from click.testing import CliRunner
from tfvae_cli.main import cli

results = {"import": {"tensorflow": tried[:]}}
for key, argv in json.loads(sys.argv[1]).items():
    tried.clear()
    result = CliRunner().invoke(cli, argv)
    results[key] = {"exit_code": result.exit_code, "output": result.output,
                    "tensorflow": tried[:], "exception": repr(result.exception)}
print(json.dumps(results))
"""

#: ``key: (argv, exit code, words in the output)``; ``{run}`` and the like are paths.
WITHOUT_TENSORFLOW_CASES = {
    "help": (["--help"], 0, "evaluate"),
    **{f"help {c}": ([c, "--help"], 0, "Examples:") for c in
       ("train", "evaluate", "sample", "export", "diagnose")},
    "version": (["--version"], 0, "tfvae, version"),
    "train into a run": (["train", "--epochs", "1", "--out", "{run}"], 1,
                         "already holds a tfvae run"),
    "evaluate a missing run": (["evaluate", "{missing}"], 1, "does not exist"),
    "export over other files": (["export", "{run}", "--out", "{other}"], 1,
                                "not a tfvae export"),
    "export over other files, overwrite": (
        ["export", "{run}", "--out", "{other}", "--overwrite"], 1, "not a tfvae export"),
    "sample a missing run": (["sample", "{missing}", "--out", "{png}"], 1, "does not exist"),
    "train on missing data": (["train", "--data-dir", "{missing}", "--out", "{fresh}"], 1,
                              "data path"),
    "resume a run in use": (["train", "--resume", "{held}"], 1, "in use by tfvae process {pid}"),
}


@pytest.fixture(scope="module")
def without_tensorflow(tiny_run, tmp_path_factory, hold_lock):
    """Every case of WITHOUT_TENSORFLOW_CASES, run once in one fresh interpreter."""
    root = tmp_path_factory.mktemp("without-tensorflow")
    other = root / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    run, held = root / "run", root / "held"
    shutil.copytree(tiny_run, run)
    shutil.copytree(tiny_run, held)
    values = {"run": run, "held": held, "missing": root / "nope", "other": other,
              "png": root / "s.png", "fresh": root / "fresh"}
    before = (run / "config.json").read_text()
    with hold_lock(held) as pid:
        cases = {key: [a.format(**values) for a in argv]
                 for key, (argv, _, _) in WITHOUT_TENSORFLOW_CASES.items()}
        done = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, json.dumps(cases)],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    # Nothing a refusal touched was changed or made.
    assert (other / "notes.txt").read_text() == "keep me" and len(list(other.iterdir())) == 1
    assert (run / "config.json").read_text() == before
    assert not (root / "fresh").exists() and not (root / "s.png").exists()
    return json.loads(done.stdout), pid


def test_importing_tfvae_and_its_command_needs_no_tensorflow(without_tensorflow):
    results, _ = without_tensorflow
    assert results["import"]["tensorflow"] == []


@pytest.mark.parametrize("case", list(WITHOUT_TENSORFLOW_CASES))
def test_help_and_refusals_come_before_tensorflow_is_imported(without_tensorflow, case):
    """Help and path checks need no TensorFlow: with it unimportable, they still answer,
    without a traceback, and never try to import it."""
    results, pid = without_tensorflow
    _, exit_code, words = WITHOUT_TENSORFLOW_CASES[case]
    result = results[case]
    assert result["exit_code"] == exit_code, result
    assert words.format(pid=pid) in result["output"], result
    assert "Traceback" not in result["output"] and result["tensorflow"] == [], result
    if case == "resume a run in use":  # refused at once, nothing said first
        assert "resuming" not in result["output"]


# ---------------------------------------------------------------- in-process commands


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_has_help_with_examples(runner, command):
    result = runner.invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Examples:" in result.output and "--verbose" in result.output


def test_train_options_become_the_config_and_the_report_names_the_run(runner, tmp_path,
                                                                     monkeypatch, tiny_run):
    import tfvae
    import tfvae.training

    calls = []

    def train(config, out, **kwargs):
        calls.append((config, out, kwargs))
        return tfvae.load_run(tiny_run)

    monkeypatch.setattr(tfvae.training, "train", train)
    out = tmp_path / "run"
    result = runner.invoke(cli, ["train", "--epochs", "3", "--hidden", "64,32", "--latent-dim",
                                 "5", "--iwae-k", "7", "--model", "bernoulli", "--estimator",
                                 "disarm", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (config, given_out, kwargs), = calls
    assert (config.epochs, config.hidden, config.latent_dim, config.iwae_k) == (3, (64, 32), 5, 7)
    assert (config.model, config.estimator) == ("bernoulli", "disarm")
    assert given_out == str(out) and kwargs["verbose"] == 2  # not a terminal: a line an epoch
    evaluation = json.loads((tiny_run / "evaluation.json").read_text())
    assert result.output.splitlines()[-1] == (
        f"done: test elbo {evaluation['elbo']:.2f}, log-likelihood (k={evaluation['k']}) "
        f"{evaluation['log_likelihood']:.2f} nats; run in {tiny_run}")


def test_evaluate_and_sample_a_run(runner, tiny_run, tmp_path):
    result = runner.invoke(cli, ["evaluate", str(tiny_run), "--k", "7", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["k"] == 7 and report["n"] == 1000
    assert report["reconstruction"] > 0 and len(report["kl_per_dim"]) == 2
    for key in ("elbo", "kl", "log_likelihood", "active_units"):
        assert key in report
    # The same figures as a table.
    result = runner.invoke(cli, ["evaluate", str(tiny_run), "--k", "7"])
    assert result.exit_code == 0
    assert f"log_likelihood: {report['log_likelihood']:.3f}" in result.output

    npy = tmp_path / "s.npy"
    result = runner.invoke(cli, ["sample", str(tiny_run), "--n", "5", "--out", str(npy),
                                 "--seed", "4"])
    assert result.exit_code == 0, result.output
    images = np.load(npy)
    assert images.shape == (5, 784) and 0 <= images.min() and images.max() <= 1
    result = runner.invoke(cli, ["sample", str(tiny_run), "--n", "5", "--out", str(npy)])
    assert result.exit_code != 0 and "--overwrite" in result.output
    np.testing.assert_array_equal(np.load(npy), images)
    result = runner.invoke(cli, ["sample", str(tiny_run), "--n", "5", "--out", str(npy),
                                 "--seed", "4", "--overwrite", "--checkpoint", "last"])
    assert result.exit_code == 0, result.output
    assert np.load(npy).shape == (5, 784)
    png = tmp_path / "s.png"
    result = runner.invoke(cli, ["sample", str(tiny_run), "--n", "9", "--out", str(png)])
    assert result.exit_code == 0 and png.read_bytes()[:4] == b"\x89PNG"


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

    from conftest import freeze_imported_objects
    from tfvae_cli import main as cli_main

    import tfvae.training
    from tfvae.errors import ConfigError

    frozen = []

    def fake_train(*args, **kwargs):
        frozen.append(gc.get_freeze_count())
        raise ConfigError("stop here")

    monkeypatch.setattr(tfvae.training, "train", fake_train)
    monkeypatch.setattr(cli_main, "_OWN_PROCESS", False)
    before = gc.get_freeze_count()  # what the test session froze (conftest)
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
        gc.unfreeze()  # the console script froze this test's garbage too: collect it
        if before:
            freeze_imported_objects()
    assert frozen[0] == before and frozen[1] > before
