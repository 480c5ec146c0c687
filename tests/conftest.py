"""Shared pytest configuration and fixtures.

Tests run offline on the package's own data (the embedded mnist-10k, small
arrays made here) and are seeded; slow ones are marked ``slow``.

Training runs are made once per session and copied: ``tiny_run`` (a
Gaussian VAE) and ``trained_run(family)`` (any family, trained on first
request) are folders that tests read; a test that changes a run works on a
copy (``copy_run``).
"""

import contextlib
import gc
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Quiet TensorFlow's C++ logging in test output (the application's choice).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
#: ../shared beside the checkout (the shared benchmark protocol and peers).
SHARED = ROOT.parent / "shared"

#: Small networks: what every test model and run uses unless it needs its own sizes.
SMALL = dict(latent_dim=2, hidden=(32,))
#: ``tfvae.train`` options of a small quiet run (add ``out`` and ``epochs``).
SMALL_RUN = dict(SMALL, iwae_k=5, verbose=0, figures=False)


#: Tests that take a minute or more, longest first (a prefix of a test's id).
LONGEST = (
    "tests/test_readme.py::test_every_block_runs",
    "tests/test_exported.py::test_build_sh",
    "tests/test_relax.py::test_relax_trains",
    "tests/test_mean_field.py::test_cli_trains",
    "tests/test_distribute.py::test_mirrored_matches",
)


#: What runs import on first use: imported before the objects of imports are frozen.
LAZY_MODULES = ("tensorflow", "tf_keras", "tensorflow_probability", "sklearn.mixture",
                "matplotlib.figure", "matplotlib.backends.backend_agg",
                "tensorboard.summary", "tfvae.training", "tfvae.export",
                "tfvae_cli.main")


def pytest_collection_modifyitems(config, items):
    """Longest tests first, the documentation pages with the most code first among them.

    With ``-n 2 --dist worksteal`` (CI's slow run), a worker that finishes
    early takes tests queued for the other, so starting the long ones first
    leaves no long test running alone at the end.
    """
    def cost(item):
        rank = next((i for i, prefix in enumerate(LONGEST) if item.nodeid.startswith(prefix)),
                    len(LONGEST))
        page = getattr(item, "callspec", None) and item.callspec.params.get("page")
        return rank, -len(page.read_text()) if rank == 0 and page else 0

    items.sort(key=cost)


def pytest_collection_finish(session):
    """Objects that exist once the tests are collected leave the collector's full passes.

    They are the imported modules' (TensorFlow's many among them) and live as
    long as the test process. ``tfvae.train`` hands memory back with a
    full collection several times a run, and each walks every tracked object;
    frozen (as the console script freezes them, see ``tfvae_cli.main``), those
    walks cover only what the tests make. The modules a run imports only when
    it needs them (the mixture, the figures, TensorBoard's writer, export)
    are imported first, so that their objects are frozen too.
    """
    import importlib

    for module in LAZY_MODULES:
        importlib.import_module(module)
    freeze_imported_objects()


def freeze_imported_objects():
    """Collects garbage, then moves every object left out of the collector's reach."""
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def binary_images():
    """256 statically binarized MNIST digits from the embedded data, [256, 784] float32."""
    from tfvae import data

    ds = data.load_dataset("mnist-10k")
    bits = data.binarize_static(ds.x_train[:256], seed=0)
    return bits.astype(np.float32)


@pytest.fixture(scope="session")
def digits_npz(tmp_path_factory):
    """A ``--data-dir`` file of 640 training and 160 test digits of the embedded data:
    real images for CLI runs that only need to train, resume and evaluate."""
    from tfvae import data

    ds = data.load_dataset("mnist-10k")
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, x_train=ds.x_train[:640], x_test=ds.x_test[:160],
             y_train=ds.y_train[:640], y_test=ds.y_test[:160])
    return path


@pytest.fixture
def make_model():
    """``make_model(family, **kwargs)``: a small seeded model of any family.

    ``family`` is a key of ``tfvae.runs.FAMILIES`` (``gaussian``, ``bernoulli``,
    ``sbn``, ``ae-gmm``); keyword arguments override the small defaults
    (784 inputs and :data:`SMALL`).
    """
    from tfvae._keras import keras
    from tfvae.runs.families import family

    def make(name, **kwargs):
        keras.utils.set_random_seed(0)
        return family(name).cls()(**{"input_dim": 784, **SMALL, **kwargs})

    return make


class TrainedRuns:
    """``trained_runs(family)``: the folder of a complete small run of that family.

    Each family is trained once per session, on the first test that asks
    (2 epochs on the embedded mnist-10k, :data:`SMALL` networks, figures
    written): a run as ``tfvae train`` leaves it. Tests only read it; copy it
    (``copy_run``) to change it. ``fit_seen(family)`` is what Keras' ``fit``
    saw in that run: its steps per epoch and how often it traced the
    training function.
    """

    def __init__(self, root: Path):
        self.root, self.runs, self.seen = root, {}, {}

    def __call__(self, family: str = "gaussian") -> Path:
        if family not in self.runs:
            import tfvae

            seen = {}

            class Probe(tfvae.keras.callbacks.Callback):
                def on_train_end(self, logs=None):
                    seen.update(steps=self.params["steps"],
                                traced=self.model.train_function.experimental_get_tracing_count())

            out = self.root / family
            tfvae.train(model=family, out=out, epochs=2, callbacks=[Probe()],
                        **{**SMALL_RUN, "figures": True})
            self.runs[family], self.seen[family] = out, seen
        return self.runs[family]

    def fit_seen(self, family: str = "gaussian") -> dict:
        self(family)
        return dict(self.seen[family])


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """``trained_run(family)``: a run of that family, trained once per session (TrainedRuns)."""
    return TrainedRuns(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="session")
def tiny_run(trained_run):
    """The Gaussian VAE run of :func:`trained_run`."""
    return trained_run("gaussian")


@pytest.fixture
def copy_run(trained_run, tmp_path):
    """``copy_run(family="gaussian", name="run")``: a copy of that family's run to change."""

    def copy(family: str = "gaussian", name: str = "run") -> Path:
        return Path(shutil.copytree(trained_run(family), tmp_path / name))

    return copy


@pytest.fixture(scope="session")
def hold_lock():
    """``with hold_lock(run_dir) as pid:`` another process holds the run's lock."""
    return _lock_held_by_another_process


@contextlib.contextmanager
def _lock_held_by_another_process(run_dir):
    """Yields the pid of a process holding ``run_dir``'s lock; SIGKILLs it after.

    The holder keeps the lock until it is killed (it waits on its stdin,
    which is never written).
    """
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from tfvae.runs.layout import RunLock; "
         "held = RunLock(sys.argv[1]).acquire(); print('locked', flush=True); sys.stdin.read()",
         str(run_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield holder.pid
    finally:
        holder.kill()  # SIGKILL: the kernel drops the lock with the process
        holder.wait()
        holder.stdin.close()
        holder.stdout.close()


@pytest.fixture
def recorder(tmp_path, make_model):
    """A RunRecorder of a small compiled model writing ``tmp_path``, as ``fit`` sets it up."""
    from tfvae._keras import keras
    from tfvae.runs.recorder import RunRecorder

    model = make_model("gaussian")
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    recorder = RunRecorder(tmp_path, monitor="loss")
    recorder.set_model(model)
    recorder.on_train_begin()
    return recorder


def recorder_epoch(recorder, epoch, loss):
    """Runs epoch ``epoch`` (from 0) of ``recorder`` with a given loss."""
    recorder.on_epoch_begin(epoch)
    recorder.on_epoch_end(epoch, {"loss": loss})
