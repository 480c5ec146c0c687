"""Run folders are written only where they are, from records that can be trusted.

Each test closes a class of fault of issue 31: writes through symbolic links
(1), records that resume into the wrong state (4), a second writer and an
unwritable ``--out`` refused before TensorFlow loads (8), and the smaller
ones (9): deeply nested JSON, SIGTERM while TensorFlow loads, a full disk
while figures are written.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SMALL_RUN, recorder_epoch
from tfvae_cli.main import cli

import tfvae
from tfvae import files
from tfvae.errors import Interrupted, RunDirError, TfvaeWarning
from tfvae.runs import layout, record

#: Options of a small ``tfvae train`` on the command line.
TRAIN = ["train", "--epochs", "1", "--hidden", "32", "--latent-dim", "2", "--iwae-k", "5"]


def _contents(folder: Path) -> dict:
    """Every regular file under ``folder`` (not through links) and its bytes."""
    return {p: p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and not p.is_symlink() and p.name != layout.LOCK}


def _unfinished(run: Path) -> Path:
    """The run, as if its final evaluation had not finished: a resume writes the end again."""
    (run / layout.EVALUATION).unlink()
    return run


# ------------------------------------------------------------------ 1. links


def test_a_lock_file_that_is_a_link_is_refused_and_its_target_kept(tmp_path):
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes")
    hard = tmp_path / "hard.txt"
    hard.write_text("my other notes")
    for lock in (tmp_path / "soft.lock", tmp_path / "hard.lock"):
        if lock.name == "soft.lock":
            lock.symlink_to(mine)
        else:
            os.link(hard, lock)
        with pytest.raises(RunDirError, match=f"{lock.name} is a (symbolic|hard) link"):
            files.FileLock(lock, note="tfvae process 1").acquire()
    assert mine.read_text() == "my notes" and hard.read_text() == "my other notes"


def test_a_new_out_holding_only_a_linked_lock_is_refused(tmp_path):
    mine = tmp_path / "notes.txt"
    mine.write_text("my notes")
    out = tmp_path / "run"
    out.mkdir()
    (out / layout.LOCK).symlink_to(mine)
    result = CliRunner().invoke(cli, TRAIN + ["--out", str(out)])
    assert result.exit_code == 1, result.output
    assert f"{out / layout.LOCK} is a symbolic link" in result.output
    assert mine.read_text() == "my notes"
    assert sorted(p.name for p in out.iterdir()) == [layout.LOCK]


@pytest.mark.parametrize("entry", [
    layout.LOCK, layout.FIGURES, layout.CHECKPOINTS, layout.TENSORBOARD, layout.STATUS,
    layout.CONFIG, f"{layout.CHECKPOINTS}/{layout.BEST}", f"{layout.CHECKPOINTS}/{layout.STATE}",
])
def test_a_run_whose_entries_are_links_is_refused_before_anything_is_written(
        copy_run, tmp_path, entry):
    # A user's own folder or file, linked into the run: a resume once overwrote the
    # samples.png of a figures/ linked outside the run.
    run = _unfinished(copy_run())
    (run / layout.TENSORBOARD).mkdir(exist_ok=True)
    inside = run / entry
    outside = tmp_path / "users" / f"mine{inside.name}"
    outside.parent.mkdir()
    if inside.exists():
        inside.rename(outside)
    else:
        outside.write_text("the user's own")
    inside.symlink_to(outside)
    theirs, ours = _contents(outside.parent), _contents(run)
    with pytest.raises(RunDirError, match=f"{entry} is a symbolic link") as info:
        tfvae.train(resume=run, verbose=0)
    assert "never through a link" in str(info.value)
    assert _contents(outside.parent) == theirs and _contents(run) == ours


def test_a_run_whose_files_are_folders_is_refused_naming_them(copy_run):
    run = _unfinished(copy_run())
    (run / layout.EVALUATION).mkdir()
    with pytest.raises(RunDirError, match=f"{layout.EVALUATION} is not a file"):
        tfvae.train(resume=run, verbose=0)
    (run / layout.EVALUATION).rmdir()
    (run / layout.LOCK).unlink(missing_ok=True)
    (run / layout.LOCK).mkdir()
    with pytest.raises(RunDirError, match=f"{layout.LOCK} is a folder, not a lock file"):
        tfvae.train(resume=run, verbose=0)


def test_files_are_replaced_through_exclusive_temporary_files_never_through_links(
        tmp_path, monkeypatch):
    # A link where a file is replaced is itself replaced: its target keeps its bytes.
    # The temporary file beside it is made new (O_EXCL) and never through a link.
    run = tmp_path / "run"
    run.mkdir()
    targets = {}
    for name in ("run.json", "last.weights.h5"):
        targets[name] = tmp_path / f"users-{name}"
        targets[name].write_text("the user's own")
        (run / name).symlink_to(targets[name])
    opened = []
    real_open = os.open

    def spy(path, flags, *args, **kwargs):
        opened.append((os.fspath(path), flags))
        return real_open(path, flags, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", spy)
        files.atomic_write_json(run / "run.json", {"status": "training"})
        with files.atomic_path(run / "last.weights.h5") as tmp:
            with open(tmp, "wb") as f:  # what a writer given a path does
                f.write(b"weights")
    for name, target in targets.items():
        assert target.read_text() == "the user's own"
        assert not (run / name).is_symlink()
    assert (run / "last.weights.h5").read_bytes() == b"weights"
    temporary = [flags for path, flags in opened if Path(path).parent == run]
    assert len(temporary) == 2, opened
    for flags in temporary:
        assert flags & os.O_CREAT and flags & os.O_EXCL and flags & os.O_NOFOLLOW
    assert sorted(p.name for p in run.iterdir()) == ["last.weights.h5", "run.json"]


def test_a_figure_replaces_a_link_in_its_place_not_its_target(tmp_path):
    from tfvae import figures

    mine = tmp_path / "mine.png"
    mine.write_bytes(b"my picture")
    folder = tmp_path / "figures"
    folder.mkdir()
    (folder / "samples.png").symlink_to(mine)
    figures.save_grid(folder / "samples.png", np.zeros((4, 16)), (4, 4), "samples")
    assert mine.read_bytes() == b"my picture"
    path = folder / "samples.png"
    assert not path.is_symlink() and path.read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in folder.iterdir()) == ["samples.png"]


# ------------------------------------------------------------------ 4. records


@pytest.mark.parametrize("edit, words", [
    (lambda r: r.update(best=float("-inf")), "'best'"),
    (lambda r: r.update(best=float("nan")), "'best'"),
    (lambda r: r.update(best=-1e30), "'best'"),
    (lambda r: r.update(best_epoch=None), "'best'"),
    (lambda r: r["history"][1].update(loss=float("nan")), "history entry 1"),
    (lambda r: r["history"][0].update(val_loss=float("inf")), "history entry 0"),
])
def test_a_record_with_a_best_value_or_history_it_cannot_have_is_refused(copy_run, edit, words):
    # "best": -Infinity kept epoch 2's weights as the best of a resumed run whose epoch 4
    # was better; a NaN in the history was taken as a metric.
    run = copy_run()
    path = run / layout.CHECKPOINTS / layout.RESUME
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))  # Python's json writes NaN and Infinity tokens
    before = _contents(run)
    with pytest.raises(RunDirError, match="not a valid training record") as info:
        tfvae.train(resume=run, epochs=3, verbose=0, figures=False)
    assert words in str(info.value)
    assert _contents(run) == before


def test_the_record_of_a_run_is_consistent_with_itself(tiny_run):
    state = record.read(tiny_run)
    values = [row[state.monitor] for row in state.history]
    assert state.best == min(values) and values[state.best_epoch - 1] == state.best


@pytest.mark.parametrize("damage", ["{oops", "[1, 2]", "[" * 100_000])
def test_a_damaged_evaluation_is_made_again_by_resume_and_read_as_missing(copy_run, damage):
    # A corrupt evaluation.json blocked export, and --resume said "completed": stuck until
    # the file was deleted by hand. It is derived data: evaluated again.
    run = copy_run()
    (run / layout.EVALUATION).write_text(damage)
    loaded = tfvae.load_run(run)
    with pytest.warns(TfvaeWarning, match=f"{layout.EVALUATION}.*treated as missing"):
        assert loaded.evaluation is None
    with pytest.warns(TfvaeWarning, match=layout.EVALUATION):
        resumed = tfvae.train(resume=run, verbose=0, figures=False)
    assert resumed.status["status"] == "completed" and resumed.status["epochs_completed"] == 2
    assert json.loads((run / layout.EVALUATION).read_text())["k"] == 5


def test_a_damaged_status_is_read_as_missing_and_written_again_by_resume(copy_run):
    run = copy_run()
    (run / layout.STATUS).write_text('{"status": "completed", ')
    with pytest.warns(TfvaeWarning, match=f"{layout.STATUS}.*treated as missing"):
        assert tfvae.load_run(run).status == {}
    with pytest.warns(TfvaeWarning, match=layout.STATUS):
        resumed = tfvae.train(resume=run, verbose=0, figures=False)
    assert json.loads((run / layout.STATUS).read_text())["status"] == "completed"
    assert resumed.evaluation["k"] == 5


def test_an_export_of_a_run_with_a_damaged_evaluation_goes_on_with_a_warning(copy_run,
                                                                             tmp_path):
    run = copy_run()
    (run / layout.EVALUATION).write_text("{oops")
    result = CliRunner().invoke(cli, ["export", str(run), "--format", "savedmodel",
                                      "--out", str(tmp_path / "export")])
    assert result.exit_code == 0, result.output
    assert "treated as missing" in result.output


def _signal_at(sig, epoch_from_1, batch=0):
    class SignalAt(tfvae.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch + 1

        def on_train_batch_end(self, index, logs=None):
            if self.epoch == epoch_from_1 and index == batch:
                os.kill(os.getpid(), sig)

    return SignalAt()


def test_a_second_ctrl_c_while_the_first_is_recorded_still_records_it(tmp_path, monkeypatch):
    # Two SIGINTs 50 ms apart left run.json at "training": the second came while the
    # status of the first was written. Here it comes exactly then.
    real, sent = record.write_status, []

    def write_status(run_dir, config, status, *args, **kwargs):
        if status == "interrupted" and not sent:
            sent.append(status)
            os.kill(os.getpid(), signal.SIGINT)
        return real(run_dir, config, status, *args, **kwargs)

    monkeypatch.setattr(record, "write_status", write_status)
    out = tmp_path / "run"
    with pytest.raises(Interrupted, match=f"after 1 of 40 epochs.*--resume {out}"):
        tfvae.train(out=out, epochs=40, callbacks=[_signal_at(signal.SIGINT, 2)], **SMALL_RUN)
    assert sent
    assert json.loads((out / layout.STATUS).read_text())["status"] == "interrupted"
    assert record.read(out).epoch == 1


def test_ctrl_c_while_an_epoch_is_committed_stops_after_the_commit(recorder, tmp_path,
                                                                  monkeypatch):
    # In a user's own fit (Python's default Ctrl-C) as in tfvae train: a signal between the
    # weights' renames and the record once left weights the record did not name.
    from tfvae.runs import store

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    recorder_epoch(recorder, 0, 2.0)
    real = record.write

    def ctrl_c_then_write(run_dir, state):
        os.kill(os.getpid(), signal.SIGINT)
        return real(run_dir, state)

    recorder.model.set_weights([w + 1.0 for w in recorder.model.get_weights()])
    monkeypatch.setattr(record, "write", ctrl_c_then_write)
    with pytest.raises(KeyboardInterrupt):
        recorder_epoch(recorder, 1, 1.0)
    state = record.read(tmp_path)
    assert state.epoch == 2 and state.best_epoch == 2
    for name in (layout.LAST, layout.BEST):
        assert store.weights_digest(tmp_path / layout.CHECKPOINTS / name) == state.weights[name]
    assert json.loads((tmp_path / layout.METRICS_JSON).read_text()) == state.history


# ------------------------------------------------------------------ 8. one writer, at once


#: ``tfvae ARGS...`` in which ``ACTION`` happens as TensorFlow starts to load: ``refuse``
#: (exit 99: the command went that far), ``block`` (say so, then wait), ``sigterm``.
AS_TENSORFLOW_LOADS = """
import importlib.abc, os, signal, sys

action = sys.argv[1]

class AsTensorFlowLoads(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        if action == "refuse":
            sys.__stderr__.write("TENSORFLOW LOADED\\n")
            os._exit(99)
        if action == "block":
            print("tensorflow is loading", flush=True)
            sys.stdin.read()
        if action == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
        return None

sys.meta_path.insert(0, AsTensorFlowLoads())
from tfvae_cli.main import main
sys.argv = ["tfvae"] + sys.argv[2:]
main()
"""


def _tfvae(action, *args, **kwargs):
    return [sys.executable, "-c", AS_TENSORFLOW_LOADS, action, *map(str, args)]


@pytest.mark.parametrize("how", ["new", "resume"])
def test_a_second_writer_is_refused_before_tensorflow_loads_with_the_first_ones_id(
        copy_run, tmp_path, how):
    # The second `tfvae train` loaded TensorFlow and was refused only then, without the
    # other process's id. The first takes the lock as it makes the folder, before loading.
    run = copy_run() if how == "resume" else tmp_path / "new"
    args = ["train", "--resume", run, "--epochs", "3"] if how == "resume" else \
        TRAIN + ["--out", run]
    first = subprocess.Popen(_tfvae("block", *args), stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "tensorflow is loading", first.stderr.read()
        second = subprocess.run(_tfvae("refuse", *args), capture_output=True, text=True,
                                timeout=120)
    finally:
        first.kill()
        first.communicate()
    assert second.returncode == 1, second.stderr[-2000:]
    assert f"in use by tfvae process {first.pid}" in second.stderr
    assert "continue it with" not in second.stderr and "TENSORFLOW LOADED" not in second.stderr


def test_a_folder_written_by_a_running_process_is_in_use_not_to_resume(copy_run, hold_lock):
    run = copy_run()
    with hold_lock(run) as pid:
        result = CliRunner().invoke(cli, TRAIN + ["--out", str(run)])
    assert result.exit_code == 1, result.output
    assert f"in use by tfvae process {pid}" in result.output
    assert "tfvae train --resume" not in result.output


def test_an_out_that_cannot_be_made_is_refused_before_tensorflow_loads(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for out in ([Path("/proc/nope")] if Path("/proc/self").is_dir() else []) + [afile / "run"]:
        done = subprocess.run(_tfvae("refuse", *TRAIN, "--out", out), capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 1, done.stderr[-2000:]
        assert f"cannot create the run directory {out}: " in done.stderr, done.stderr[-2000:]
        assert "file not found" not in done.stderr and "Traceback" not in done.stderr


def test_a_run_that_never_started_leaves_no_folder(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, TRAIN + ["--dataset", "no_such_dataset_xyz",
                                              "--out", str(out)])
    assert result.exit_code == 1 and "no_such_dataset_xyz" in result.output, result.output
    assert not out.exists()
    kept = tmp_path / "empty"
    kept.mkdir()
    result = CliRunner().invoke(cli, TRAIN + ["--dataset", "no_such_dataset_xyz",
                                              "--out", str(kept)])
    assert result.exit_code == 1 and list(kept.iterdir()) == []


# ------------------------------------------------------------------ 9. smaller ones


def test_sigterm_while_tensorflow_loads_is_a_ctrl_c(tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(_tfvae("sigterm", *TRAIN, "--out", out), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 130, done.stderr[-2000:]
    assert "interrupted while TensorFlow loaded; nothing was written" in done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


@pytest.mark.parametrize("name", [layout.CONFIG, f"{layout.CHECKPOINTS}/{layout.RESUME}"])
def test_deeply_nested_json_in_a_run_file_is_refused_as_such(copy_run, name):
    run = copy_run()
    (run / name).write_text("[" * 100_000 + "]" * 100_000)
    for argv in (["train", "--resume", str(run)], ["evaluate", str(run)]):
        result = CliRunner().invoke(cli, argv)
        assert result.exit_code == 1, (argv, result.output, result.exception)
        assert "nested too deeply" in result.output and "Recursion" not in result.output


def test_nesting_a_check_meets_is_refused_as_such(copy_run):
    # JSON that loads, then reaches a check that walks it or prints it.
    run = copy_run()
    path = run / layout.CHECKPOINTS / layout.RESUME
    text = path.read_text()
    for depth in (sys.getrecursionlimit() - 200, 100_000):
        for key in ("best", "monitor", "prefix", "history", "weights", "best_epoch"):
            data = dict(json.loads(text), **{key: "NESTED"})
            nested = "[" * depth + "]" * depth
            path.write_text(json.dumps(data).replace('"NESTED"', nested))
            with pytest.raises(RunDirError,
                               match="not a valid training record|nested too deeply") as info:
                record.read(run)
            assert len(str(info.value)) < 1000


def test_a_full_disk_while_figures_are_written_says_to_resume(copy_run, monkeypatch):
    from matplotlib.figure import Figure

    run = _unfinished(copy_run())
    figures = run / layout.FIGURES
    before = (figures / "samples.png").read_bytes()

    def full(self, fname, *args, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"half a png")
        raise OSError(errno.ENOSPC, "No space left on device", str(fname))

    with monkeypatch.context() as patch:
        patch.setattr(Figure, "savefig", full)
        with pytest.raises(files.StorageError) as info:
            tfvae.train(resume=run, verbose=0)
    assert str(info.value).endswith(f"Free some space, then resume with "
                                    f"`tfvae train --resume {run}`"), str(info.value)
    assert json.loads((run / layout.STATUS).read_text())["status"] == "failed"
    assert (figures / "samples.png").read_bytes() == before  # the last whole figure kept
    assert not [p for p in figures.iterdir() if p.name.startswith(".")]
    resumed = tfvae.train(resume=run, verbose=0)
    assert resumed.status["status"] == "completed"
    assert (figures / "samples.png").read_bytes().startswith(b"\x89PNG")
