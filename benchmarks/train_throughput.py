"""Training and IWAE-evaluation speed and peak memory, side by side with the peers.

Settings of the peers (../shared/bench): 784-400-20 MLP, batch 128, Adam 1e-3,
statically binarized Fashion-MNIST (60,000 training images, no validation
carve-out). Each program runs in its own process so peak resident memory
(``ru_maxrss`` of that process) is its own.

    python benchmarks/train_throughput.py --epochs 3 --iwae-k 1000 \
        --peer-python /path/to/torch-venv/bin/python

Prints one JSON line per program run: seconds/epoch (median of the epochs
after the first, which includes tracing and compilation), images/s, peak
memory in MiB of the training process (tfvae: measured right after
``tfvae.train`` returns, so it includes the run's final test evaluation) and,
with --iwae-k, the time of an IWAE evaluation of the 10,000 test images (and
the peak after it). With --rounds N the peer and tfvae alternate N times, and
a summary line per model gives the medians and their ratios: a machine's
speed can drift over minutes, so single runs mislead.
With --main-job it times the README's main job (`tfvae train`, no options)
from the command line, then phase by phase in one process (imports; data,
model and the compilation of the training loop; the first epoch with the
tracing of Keras' training function; later epochs; evaluation and figures),
beside the peer's whole 20-epoch run on the same digits.
Every tfvae run starts in a fresh process and compiles its programs itself,
as a user's run does.

The latest results, with their command, date, commit and machine, are in
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_BENCH = HERE.parent.parent / "shared" / "bench"

# Runs inside a fresh process: trains with tfvae.train (the default fast path)
# and reports its own figures, then its own peak RSS.
TFVAE_CHILD = r"""
import json, resource, statistics, sys, tempfile, time
from pathlib import Path
opts = json.loads(sys.argv[1])
import tfvae
from tfvae.evaluation import evaluate
from tfvae.training import choose_path
from tfvae.runs.run_data import load_data
iwae_k = opts.pop("iwae_k_bench")
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
with tempfile.TemporaryDirectory() as tmp:
    c0 = time.process_time()
    run = tfvae.train(out=Path(tmp) / "run", verbose=0, figures=False, **opts)
    secs = [h["seconds"] for h in run.history]
    median = statistics.median(secs[1:] or secs)
    n_train = run.status["data"]["train"]
    out = {"program": "tfvae", "model": opts["model"], "arch": opts.get("arch", "mlp"),
           "path": choose_path(run.config), "epochs": opts["epochs"],
           "sec_per_epoch_median": median, "first_epoch_sec": secs[0],
           "train_images_per_sec": n_train / median,
           "process_cpu_sec": time.process_time() - c0,
           "test_elbo": run.evaluation["elbo"], "peak_rss_mib": peak()}
    if iwae_k:
        _, splits = load_data(run.config)
        t0 = time.perf_counter()
        ev = evaluate(run.model, splits.test, k=iwae_k)
        out["iwae_sec"] = time.perf_counter() - t0
        out["test_iwae_k"] = iwae_k
        out["test_log_likelihood_iwae"] = ev["log_likelihood"]
        out["peak_rss_with_iwae_mib"] = peak()
print(json.dumps(out))
"""

# The README's main job, phase by phase, in a fresh process: what `tfvae train`
# does with no options (the library call the command makes, figures included).
MAINJOB_CHILD = r"""
import gc, json, sys, tempfile, time
t0 = time.perf_counter()
import tfvae._keras  # TensorFlow, TFP and tf_keras, imported as the command does
t_tf = time.perf_counter()
import tfvae
from tfvae_cli.main import cli
gc.freeze()  # as the console script does before training
t_import = time.perf_counter()
marks = {}
class Mark(tfvae.keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        marks["train_begin"] = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        marks.setdefault("first_epoch_end", time.perf_counter())
    def on_train_end(self, logs=None):
        marks["train_end"] = time.perf_counter()
with tempfile.TemporaryDirectory() as tmp:
    run = tfvae.train(out=tmp + "/run", verbose=0, callbacks=[Mark()])
    elbo = run.evaluation["elbo"]
t_end = time.perf_counter()
print(json.dumps({
    "program": "tfvae", "job": "main", "test_elbo": elbo,
    "import_tensorflow_sec": t_tf - t0, "import_tfvae_sec": t_import - t_tf,
    # tfvae.train compiles the fused loop before fit: in this phase, not the first epoch.
    "data_model_and_compile_sec": marks["train_begin"] - t_import,
    "first_epoch_sec": marks["first_epoch_end"] - marks["train_begin"],
    "later_epochs_sec": marks["train_end"] - marks["first_epoch_end"],
    "evaluation_and_figures_sec": t_end - marks["train_end"],
    "in_process_sec": t_end - t0}))
"""

PEER_CHILD = r"""
import json, resource, runpy, sys
script, args = sys.argv[1], sys.argv[2:]
sys.argv = [script] + args
runpy.run_path(script, run_name="__main__")
print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _last_json(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


#: Benchmark name -> tfvae options and the peer (script, extra arguments) it runs beside.
SETUPS = {
    "gaussian": ({"model": "gaussian", "hidden": [400]}, "peer_torch_vae.py", []),
    "bernoulli": ({"model": "bernoulli", "hidden": [400], "estimator": "ema"},
                  "peer_torch_bvae.py", ["--latent", "20"]),
    "ae-gmm": ({"model": "ae-gmm", "hidden": [400]}, None, []),
    # The peer's conv VAE: Conv 32/64 stride 2 to the code, no dense hidden layer.
    "conv": ({"model": "gaussian", "arch": "conv", "hidden": []}, "peer_torch_convvae.py", []),
}


def run_tfvae(args, model: str) -> dict:
    """One timed tfvae run in a fresh process (with the IWAE evaluation for ``gaussian``)."""
    options, _, _ = SETUPS[model]
    iwae_k = args.iwae_k if model == "gaussian" else 0
    opts = dict(data_dir=args.data_dir, binarize="static", val_fraction=0.0,
                epochs=args.epochs, latent_dim=20, batch_size=128, lr=1e-3,
                seed=0, iwae_k=1, iwae_k_bench=iwae_k, **options)
    done = subprocess.run([sys.executable, "-c", TFVAE_CHILD, json.dumps(opts)],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    result = _last_json(done.stdout)[-1]
    result["model"] = model
    return result


def run_peer(args, script: str, extra: list[str], data_dir=None, epochs=None) -> dict:
    cmd = [args.peer_python, "-c", PEER_CHILD, str(Path(args.bench_dir) / script),
           "--data-dir", data_dir or args.data_dir, "--epochs", str(epochs or args.epochs)]
    cmd += extra
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    rows = _last_json(done.stdout)
    result = {**rows[0], **rows[-1]}
    result["program"] = "peer"
    return result


def main_job(args) -> None:
    """The README's main job: `tfvae train` wall time, its phases, and the peer's whole run.

    The peer trains the same 784-400-20 VAE for the same 20 epochs on the
    same digits (bindata's 9,000/1,000 split of ../shared/data/mnist-test)
    and prints its test ELBO, start to finish in its own process.
    """
    import tempfile
    import time

    tfvae_cmd = str(Path(sys.executable).with_name("tfvae"))
    for _ in range(args.rounds):
        if args.peer_python:
            t0 = time.perf_counter()
            peer = run_peer(args, "peer_torch_vae.py", [], data_dir=args.digits_dir, epochs=20)
            peer.update(job="main", wall_sec=time.perf_counter() - t0)
            print(json.dumps(peer), flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            done = subprocess.run([tfvae_cmd, "train", "--out", f"{tmp}/run"],
                                  capture_output=True, text=True)
            wall = time.perf_counter() - t0
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        print(json.dumps({"program": "tfvae", "job": "main", "command": "tfvae train",
                          "wall_sec": wall}), flush=True)
        done = subprocess.run([sys.executable, "-c", MAINJOB_CHILD], capture_output=True,
                              text=True)
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        print(json.dumps(_last_json(done.stdout)[-1]), flush=True)


def main():
    # As the tfvae command does (cli/main.py): oneDNN kernels on unless the user says.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.keras is tf_keras, as in the command
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--iwae-k", type=int, default=0)
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate peer and tfvae runs this many times; ratios use medians")
    p.add_argument("--models", nargs="+", default=["gaussian", "bernoulli", "ae-gmm"],
                   choices=list(SETUPS), help="conv: the peer's conv VAE (--arch conv)")
    p.add_argument("--main-job", action="store_true",
                   help="time the README's main job (`tfvae train`) and its phases instead, "
                        "beside the peer's whole 20-epoch run on the same digits")
    p.add_argument("--digits-dir", default=str(DEFAULT_BENCH.parent / "data" / "mnist-test"))
    p.add_argument("--peer-python", default=None)
    p.add_argument("--bench-dir", default=str(DEFAULT_BENCH))
    args = p.parse_args()
    if args.main_job:
        return main_job(args)
    return side_by_side(args)


def side_by_side(args) -> None:
    peers = {name: (script, extra + (["--iwae-k", str(args.iwae_k)]
                                     if args.iwae_k and name == "gaussian" else []))
             for name, (_, script, extra) in SETUPS.items() if script}
    for model in args.models:
        has_peer = bool(args.peer_python) and model in peers
        mine, theirs = [], []
        for _ in range(args.rounds):
            if has_peer:
                peer = run_peer(args, *peers[model])
                peer["model"] = model
                theirs.append(peer)
                print(json.dumps(peer), flush=True)
            ours = run_tfvae(args, model)
            mine.append(ours)
            print(json.dumps(ours), flush=True)
        if not has_peer:
            continue
        summary = {"summary": model, "rounds": args.rounds}
        for key, name in (("train_images_per_sec", "images_per_sec"),
                          ("peak_rss_mib", "peak_rss_mib"), ("iwae_sec", "iwae_sec")):
            if all(key in r for r in mine + theirs):
                summary[f"tfvae_{name}"] = statistics.median([r[key] for r in mine])
                summary[f"peer_{name}"] = statistics.median([r[key] for r in theirs])
                summary[f"{name}_ratio"] = summary[f"tfvae_{name}"] / summary[f"peer_{name}"]
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
