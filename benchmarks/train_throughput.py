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
the peak after it). A machine's speed drifts as other jobs come and go, so
one round decides nothing: tfvae and the peer alternate over --rounds
(3 by default: tfvae, peer, tfvae, peer, ...), each run is printed with its
round, the 1-minute load average just before it and the CPU (model name, and
which of avx512f, avx512_bf16 and amx it has), and a summary line per model
gives the median images/s per side, the per-round ratios (tfvae's round i
over the peer's round i), their median and minimum, and "disagree": true
(with a warning on stderr) when one side's rounds differ by more than 20%;
"busy": true when other processes kept more than 0.2 cores busy during a
round (each row's "others_cores", from /proc/stat), which a steady load that
slows one side in every round alike would otherwise hide. Either way the
ratio is unmeasured: rerun it on a quieter machine.
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
import resource
import statistics
import subprocess
import sys
import time
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
           "precision": run.config.precision,
           "sec_per_epoch_median": median, "epoch_sec": secs,
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


#: Disagreement threshold: a side whose fastest round is more than this
#: multiple of its slowest was disturbed, so its ratio is unmeasured.
SPREAD_LIMIT = 1.2
#: Cores other processes may keep busy during a round before it counts as
#: disturbed: a side slowed down the same in every round passes SPREAD_LIMIT.
BUSY_CORES = 0.2


def machine() -> dict:
    """The 1-minute load average now, and the CPU from /proc/cpuinfo (Linux)."""
    first_cpu = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
    fields = {k.strip(): v.strip() for k, _, v in
              (line.partition(":") for line in first_cpu.splitlines())}
    flags = fields.get("flags", "").split()
    has = [f for f in ("avx512f", "avx512_bf16") if f in flags]
    has += ["amx"] if any(f.startswith("amx") for f in flags) else []
    return {"load_before": os.getloadavg()[0], "cpu": fields.get("model name", "unknown"),
            "cpu_flags": has}


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds the machine has been busy since boot (/proc/stat), and this one's children."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait (guest is within user)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return busy / os.sysconf("SC_CLK_TCK"), children.ru_utime + children.ru_stime


def timed_round(i: int, run, *run_args) -> dict:
    """One run with what the machine did around it.

    The load average lags by a minute and counts the previous round, so the
    row also says how many cores other processes kept busy during the run
    (``others_cores``): near 0 on a quiet machine.
    """
    row = {"round": i, **machine()}
    busy, own, t0 = *cpu_seconds(), time.perf_counter()
    row.update(run(*run_args))
    busy_after, own_after = cpu_seconds()
    others = (busy_after - busy) - (own_after - own)
    row["others_cores"] = round(max(others, 0.0) / (time.perf_counter() - t0), 2)
    return row


def show(row: dict) -> None:
    """Prints a run as one JSON line, the fields a reader compares first."""
    first = ("program", "model", "round", "train_images_per_sec", "sec_per_epoch_median",
             "load_before", "others_cores", "cpu", "cpu_flags")
    print(json.dumps({**{k: row[k] for k in first if k in row}, **row}), flush=True)


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
                seed=0, iwae_k=1, iwae_k_bench=iwae_k, precision=args.precision, **options)
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
    p.add_argument("--rounds", type=int, default=3,
                   help="alternate tfvae and peer runs this many times (tfvae first), "
                        "each in its own process")
    p.add_argument("--models", nargs="+", default=["gaussian", "bernoulli", "ae-gmm"],
                   choices=list(SETUPS), help="conv: the peer's conv VAE (--arch conv)")
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="what tfvae's networks compute in (`tfvae train --precision`)")
    p.add_argument("--main-job", action="store_true",
                   help="time the README's main job (`tfvae train`) and its phases instead, "
                        "beside the peer's whole 20-epoch run on the same digits")
    p.add_argument("--digits-dir", default=str(DEFAULT_BENCH.parent / "data" / "mnist-test"))
    p.add_argument("--peer-python", default=None)
    p.add_argument("--bench-dir", default=str(DEFAULT_BENCH))
    args = p.parse_args()
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.main_job:
        return main_job(args)
    return side_by_side(args)


def side_by_side(args) -> None:
    peers = {name: (script, extra + (["--iwae-k", str(args.iwae_k)]
                                     if args.iwae_k and name == "gaussian" else []))
             for name, (_, script, extra) in SETUPS.items() if script}
    for model in args.models:
        has_peer = bool(args.peer_python) and model in peers
        rows = {"tfvae": [], "peer": []}
        for i in range(1, args.rounds + 1):
            # tfvae, then the peer: round i of each runs at about the same time.
            for program in ("tfvae", "peer") if has_peer else ("tfvae",):
                row = (timed_round(i, run_tfvae, args, model) if program == "tfvae"
                       else timed_round(i, run_peer, args, *peers[model]))
                row["model"] = model
                rows[program].append(row)
                show(row)
        if has_peer:
            summarize(model, rows["tfvae"], rows["peer"])


def summarize(model: str, mine: list[dict], theirs: list[dict]) -> None:
    """Medians per side, the ratio round by round, and whether a side's rounds disagree."""
    rates = {side: [r["train_images_per_sec"] for r in rows]
             for side, rows in (("tfvae", mine), ("peer", theirs))}
    ratios = [a / b for a, b in zip(rates["tfvae"], rates["peer"], strict=True)]
    spread = {side: max(v) / min(v) for side, v in rates.items()}
    disagree = [side for side, s in spread.items() if s > SPREAD_LIMIT]
    loads = [r["load_before"] for r in mine + theirs]
    others = [r["others_cores"] for r in mine + theirs]
    summary = {"summary": model, "rounds": len(ratios),
               "tfvae_images_per_sec": statistics.median(rates["tfvae"]),
               "peer_images_per_sec": statistics.median(rates["peer"]),
               "ratios": [round(r, 3) for r in ratios],
               "median_ratio": statistics.median(ratios), "min_ratio": min(ratios),
               "tfvae_spread": spread["tfvae"], "peer_spread": spread["peer"],
               "disagree": bool(disagree), "load_before_range": [min(loads), max(loads)],
               "others_cores_max": max(others), "busy": max(others) > BUSY_CORES}
    for key in ("peak_rss_mib", "iwae_sec"):
        if all(key in r for r in mine + theirs):
            summary[f"tfvae_{key}"] = statistics.median([r[key] for r in mine])
            summary[f"peer_{key}"] = statistics.median([r[key] for r in theirs])
            summary[f"{key}_ratio"] = summary[f"tfvae_{key}"] / summary[f"peer_{key}"]
    print(json.dumps(summary), flush=True)
    if disagree:
        print(f"WARNING: {model}: the {' and '.join(disagree)} rounds differ by more than "
              f"{SPREAD_LIMIT - 1:.0%} (fastest/slowest "
              + ", ".join(f"{side} {spread[side]:.2f}" for side in disagree)
              + "): the ratio is unmeasured; rerun when the machine is quiet",
              file=sys.stderr, flush=True)
    if summary["busy"]:
        print(f"WARNING: {model}: other processes kept up to {max(others):.2f} cores busy "
              "during a round: the ratio is unmeasured; rerun when the machine is quiet",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
