"""The disk cache of XLA programs: what is loaded, published, skipped and removed."""

import hashlib
import json
import os
import subprocess
import sys
from collections import namedtuple

import pytest

from tfvae import compile_cache as cc


@pytest.fixture
def fresh(monkeypatch):
    """No cache enabled yet in this process, and no cache flag from outside."""
    monkeypatch.setattr(cc, "_enabled", None)
    monkeypatch.delenv("TF_XLA_FLAGS", raising=False)
    monkeypatch.delenv(cc.ENV, raising=False)


def _entry(program: bytes) -> bytes:
    """A cache entry as TensorFlow writes it: key (1), HLO (2), program (3)."""
    def field(number, data):
        return bytes([number << 3 | 2, len(data)]) + data
    return field(1, b"key") + field(2, b"hlo") + field(3, program)


def _publish(store, name, content):
    (store / name).write_bytes(content)
    (store / (name + ".sha256")).write_text(hashlib.sha256(content).hexdigest())


def _store(root):
    cache = cc.CompileCache.open(root)
    cache.close()
    return cache.store


def test_only_entries_whose_digest_matches_are_staged(tmp_path):
    store = _store(tmp_path)
    _publish(store, "good.pb", _entry(b"program"))
    _publish(store, "cut.pb", _entry(b"a longer program"))
    (store / "cut.pb").write_bytes(_entry(b"a longer program")[:-4])  # cut after its sidecar
    _publish(store, "forged.pb", _entry(b"a longer program")[:-4])  # cut, digest made to match
    _publish(store, "other.pb", b"\x0a\x03key")  # whole protobuf, not an entry
    (store / "bare.pb").write_bytes(_entry(b"no sidecar yet"))  # another process publishing
    _publish(store, "empty.pb", _entry(b"x"))
    (store / "empty.pb.sha256").write_text("")
    cache = cc.CompileCache.open(tmp_path)
    try:
        assert cache.loaded == {"good.pb"}
        assert sorted(p.name for p in cache.folder.glob("*.pb")) == ["good.pb"]
        assert (cache.folder / "good.pb").read_bytes() == _entry(b"program")
        assert cache.new_entries() == []
    finally:
        cache.close()


def test_new_programs_are_published_and_the_private_folder_removed(tmp_path):
    cache = cc.CompileCache.open(tmp_path)
    (cache.folder / "new.pb").write_bytes(_entry(b"compiled"))
    # TensorFlow writes through a temporary name, then renames: a part is never published.
    (cache.folder / "half.pbvm-1-2-3.tmp").write_bytes(_entry(b"compiled")[:5])
    (cache.folder / "empty.pb").write_bytes(b"")
    (cache.folder / "short.pb").write_bytes(_entry(b"compiled")[:-1])
    assert cache.new_entries() == ["empty.pb", "new.pb", "short.pb"]
    folder = cache.folder
    cache.close()
    assert not folder.exists()
    assert cache.published == ["new.pb"]
    store = cache.store
    assert sorted(p.name for p in store.iterdir()) == ["new.pb", "new.pb.sha256"]
    assert (store / "new.pb.sha256").read_text() == \
        hashlib.sha256(_entry(b"compiled")).hexdigest()
    again = cc.CompileCache.open(tmp_path)
    try:
        assert again.loaded == {"new.pb"}
    finally:
        again.close()
    cache.close()  # twice: nothing more happens


def test_tensorflow_only_reads_when_the_disk_is_nearly_full(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cc.shutil, "disk_usage",
                        lambda path: usage(1 << 40, (1 << 40) - (10 << 20), 10 << 20))
    cache = cc.CompileCache.open(tmp_path)
    try:
        assert not cache.writable
        assert cache.flags() == (f"--tf_xla_persistent_cache_directory={cache.folder} "
                                 "--tf_xla_persistent_cache_read_only=true")
    finally:
        cache.close()
    monkeypatch.undo()
    cache = cc.CompileCache.open(tmp_path)
    try:
        assert cache.writable
        assert cache.flags() == f"--tf_xla_persistent_cache_directory={cache.folder}"
    finally:
        cache.close()


def test_folders_of_killed_processes_are_removed_and_live_ones_kept(tmp_path):
    store = _store(tmp_path)
    live = store / "staging-live"
    live.mkdir()
    held = cc._try_lock(live / ".lock")
    assert held is not None
    dead = store / "staging-dead"
    dead.mkdir()
    (dead / ".lock").touch()
    (dead / "x.pb").write_bytes(b"left behind")
    unlocked_old, unlocked_new = store / "staging-old", store / "staging-new"
    unlocked_old.mkdir()
    unlocked_new.mkdir()
    os.utime(unlocked_old, (0, 0))
    try:
        cache = cc.CompileCache.open(tmp_path)
        cache.close()
        left = sorted(p.name for p in store.iterdir())
        assert left == ["staging-live", "staging-new"]
    finally:
        os.close(held)


def test_trim_removes_the_oldest_entries_beyond_the_limit(tmp_path):
    store = _store(tmp_path)
    for age, name in enumerate(["c.pb", "b.pb", "a.pb"]):  # c oldest
        _publish(store, name, b"x" * 100)
        os.utime(store / name, (1000 + age, 1000 + age))
    old = tmp_path / "tf0-older-machine"
    old.mkdir()
    _publish(old, "d.pb", b"x" * 100)
    os.utime(old / "d.pb", (999, 999))
    removed = cc.trim(tmp_path, max_bytes=200)
    assert [p.name for p in removed] == ["d.pb", "c.pb"]
    assert sorted(p.name for p in store.iterdir()) == [
        "a.pb", "a.pb.sha256", "b.pb", "b.pb.sha256"]
    assert not old.exists()  # emptied: removed too


def test_the_cache_stays_off_when_asked_or_when_it_cannot_be_used(tmp_path, fresh,
                                                                  monkeypatch):
    monkeypatch.setenv(cc.ENV, "off")
    assert cc.default_dir() is None
    assert cc.enable() is None
    monkeypatch.setenv(cc.ENV, str(tmp_path / "mine"))
    assert cc.default_dir() == tmp_path / "mine"
    monkeypatch.setenv("TF_XLA_FLAGS", "--tf_xla_persistent_cache_directory=/elsewhere")
    assert cc.enable() is None  # the user's own folder is used as set
    monkeypatch.delenv("TF_XLA_FLAGS")
    (tmp_path / "file").write_text("not a folder")
    assert cc.enable(tmp_path / "file") is None
    assert cc.enable(tmp_path / "with space") is None  # TF_XLA_FLAGS splits on spaces
    assert "TF_XLA_FLAGS" not in os.environ
    assert not list((tmp_path / "with space").glob("*/staging-*"))


# One process: a compiled function, its value and what the cache did. TensorFlow
# reads TF_XLA_FLAGS at its first compilation, so each case is its own process.
PROGRAM = r"""
import json, sys
from tfvae import compile_cache
cache = compile_cache.enable(sys.argv[1]) if sys.argv[1] != "raw" else None
import tensorflow as tf
w = tf.constant([[0.5, -1.0], [2.0, 0.25]])
@tf.function(jit_compile=True)
def f(x):
    return tf.reduce_sum(tf.nn.softplus(tf.matmul(x, w)))
print(json.dumps({"value": float(f(tf.ones([3, 2]))),
                  "new": None if cache is None else len(cache.new_entries())}))
"""


def _program(arg, env=None):
    done = subprocess.run([sys.executable, "-c", PROGRAM, str(arg)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})
    return done, (json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 else None)


def test_a_later_process_loads_the_program_and_a_damaged_entry_is_compiled_again(tmp_path):
    root = tmp_path / "cache"
    done, first = _program(root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert first["new"] == 1
    (store,) = [p for p in root.iterdir() if p.is_dir()]
    (entry,) = store.glob("*.pb")
    assert not list(store.glob("staging-*"))
    done, second = _program(root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert second == {"value": first["value"], "new": 0}  # loaded, not compiled
    assert len(list(store.glob("*.pb"))) == 1

    whole = entry.read_bytes()
    entry.write_bytes(whole[: len(whole) // 2])  # as a crash or a full disk leaves it
    # TensorFlow's own cache fails on such a file ...
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / entry.name).write_bytes(whole[: len(whole) // 2])
    done, _ = _program("raw", {"TF_XLA_FLAGS": f"--tf_xla_persistent_cache_directory={raw}"})
    assert done.returncode != 0 and "Read less bytes than requested" in done.stderr
    # ... tfvae's skips it, compiles, and publishes a good entry in its place.
    done, third = _program(root)
    assert done.returncode == 0, done.stderr[-2000:]
    assert third == {"value": first["value"], "new": 1}
    assert cc._valid(entry) and entry.stat().st_size > len(whole) // 2


def test_the_command_keeps_its_programs_for_the_next_run(tmp_path):
    root = tmp_path / "cache"
    args = [sys.executable, "-m", "tfvae_cli.main", "train", "--epochs", "1", "--hidden", "16",
            "--latent-dim", "2", "--iwae-k", "2"]
    env = {**os.environ, cc.ENV: str(root)}
    done = subprocess.run(args + ["--out", str(tmp_path / "a")], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    (store,) = [p for p in root.iterdir() if p.is_dir()]
    entries = {p.name: p.stat().st_mtime_ns for p in store.glob("*.pb")}
    assert entries and all(cc._valid(store / name) for name in entries)
    assert not list(store.glob("staging-*"))
    done = subprocess.run(args + ["--out", str(tmp_path / "b")], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    # Every program was loaded: nothing new was compiled and published.
    assert {p.name: p.stat().st_mtime_ns for p in store.glob("*.pb")} == entries
    a = json.loads((tmp_path / "a" / "evaluation.json").read_text())
    b = json.loads((tmp_path / "b" / "evaluation.json").read_text())
    assert a["elbo"] == b["elbo"]


def test_a_full_disk_under_the_cache_is_named_with_what_to_do(tmp_path, fresh, monkeypatch):
    cache = cc.CompileCache.open(tmp_path)
    monkeypatch.setattr(cc, "_enabled", cache)
    try:
        # What TensorFlow raises when its write into the private folder fails.
        raised = RuntimeError(f"{cache.folder}/xla_compile_cache__1__2__XLA_CPU_JIT.pbvm-3.tmp; "
                              "No space left on device [Op:__inference_bound_6187]")
        error = cc.error_for(raised, "run the command again")
        assert "the disk holding the compile cache" in str(error)
        assert str(cache.store) in str(error) and "TFVAE_COMPILE_CACHE=off" in str(error)
        assert str(error).endswith("then run the command again")
        elsewhere = RuntimeError("/data/run/x.h5: No space left on device")
        assert cc.error_for(elsewhere, "again") is None  # not the cache's disk
        other = RuntimeError("Incompatible shapes: [2,3] vs. [3,2]")
        assert cc.error_for(other, "again") is None  # not the cache's doing
    finally:
        cache.close()


def test_a_program_that_cannot_be_loaded_is_removed_with_a_clear_error(tmp_path, fresh,
                                                                       monkeypatch):
    # An entry that passed the checks yet fails TensorFlow's own: the programs the
    # process loaded leave the store, and the next run compiles them.
    store = _store(tmp_path)
    _publish(store, "loaded.pb", _entry(b"program"))
    cache = cc.CompileCache.open(tmp_path)
    monkeypatch.setattr(cc, "_enabled", cache)
    try:
        assert cache.loaded == {"loaded.pb"}
        # TensorFlow says this of any file cut short (a run's training state): not
        # the cache's doing, whose entries are checked whole, and nothing is removed.
        short = RuntimeError("Read less bytes than requested")
        assert cc.error_for(short, "again") is None and (store / "loaded.pb").exists()
        raised = RuntimeError("Serialized HLO does not match\n\t [[{{node "
                              "StatefulPartitionedCall}}]] [Op:__inference_compile_only_1546]")
        error = cc.error_for(raised, "run the command again")
        assert "could not load a compiled program from the compile cache" in str(error)
        assert "Serialized HLO does not match" in str(error)
        assert str(error).endswith("run the command again")
        assert not (store / "loaded.pb").exists()
        assert not (store / "loaded.pb.sha256").exists()
        # Explained once: an outer handler (the command's) leaves the inner one's advice.
        with pytest.raises(cc.CacheError, match="resume with it"):
            with cc.explained("run the command again"), cc.explained("resume with it"):
                raise raised
    finally:
        cache.close()


def test_a_run_whose_cache_disk_fills_fails_cleanly_and_can_resume(tmp_path, fresh, monkeypatch):
    import tfvae
    from tfvae import files, training

    cache = cc.CompileCache.open(tmp_path / "cache")
    monkeypatch.setattr(cc, "_enabled", cache)

    def full(*args, **kwargs):
        raise RuntimeError(f"{cache.folder}/p.pbvm-1.tmp; No space left on device")

    out = tmp_path / "run"
    try:
        with monkeypatch.context() as patch:
            patch.setattr(training, "finish_run", full)  # its evaluation compiles
            with pytest.raises(files.StorageError, match="tfvae train --resume"):
                tfvae.train(out=out, epochs=1, hidden=[16], latent_dim=2, iwae_k=2,
                            verbose=0, figures=False)
        assert json.loads((out / "run.json").read_text())["status"] == "failed"
        run = tfvae.train(resume=out, verbose=0, figures=False)
        assert run.status["status"] == "completed"
    finally:
        cache.close()


def test_a_child_of_a_tfvae_process_gets_its_own_private_folder(tmp_path, fresh, monkeypatch):
    # A tfvae process's TF_XLA_FLAGS name its private folder; a command it starts
    # inherits them, yet must not write into the parent's folder (removed at its exit).
    parent = tmp_path / "store" / "tf-x" / "staging-abc"
    monkeypatch.setenv("TF_XLA_FLAGS", f"--tf_xla_auto_jit=1 {cc.FLAG}={parent} "
                       "--tf_xla_persistent_cache_read_only=true")
    cache = cc.enable(tmp_path / "mine")
    try:
        assert cache is not None and cache.folder != parent
        assert os.environ["TF_XLA_FLAGS"] == f"--tf_xla_auto_jit=1 {cache.flags()}"
    finally:
        cache.close()
    monkeypatch.setattr(cc, "_enabled", None)
    monkeypatch.setenv("TF_XLA_FLAGS", f"{cc.FLAG}={parent} --tf_xla_auto_jit=1")
    monkeypatch.setenv(cc.ENV, "off")
    assert cc.enable() is None
    assert os.environ["TF_XLA_FLAGS"] == "--tf_xla_auto_jit=1"  # off: no folder at all
