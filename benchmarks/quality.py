"""Quality benchmark: test ELBO and IWAE log-likelihood after a fixed budget.

The protocol of ../shared/bench (README there): 784-400-z MLP, batch 128,
Adam 1e-3, 10 epochs on statically binarized Fashion-MNIST (train split with
seed 0, test split with seed 1, the bits of bindata.py), trained on the whole
training split (no validation carve-out), like the peers.

    python benchmarks/quality.py --data-dir /usr/share/datasets/fashion-mnist \
        --models gaussian bernoulli --estimators ema rloo --latent 20 \
        --iwae-k 1000 --seeds 0 [--peer-python /path/to/torch-venv/bin/python]

Prints one JSON line per run: tfvae's figures and, with --peer-python, the
matching PyTorch peer run side by side (same data, same machine).
``--models ae-gmm`` runs the autoencoder + 10-component mixture with the same
budget, for its log-likelihood next to the VAEs'. ``--models conv`` runs the
Gaussian VAE with the convolutional architecture of the shared conv peer
(Conv 32/64 stride 2, ConvTranspose 64/32; ``--iwae-k 0`` skips the IWAE,
which the conv peer does not compute).
``--models gaussian-real logistic`` train on the 8-bit pixels themselves
(issue 14): a Gaussian whose scale the decoder predicts, on dequantized
pixels ``(k + u) / 256``, beside ``peer_torch_gvae.py --scale pixel``, and the
discretized logistic beside ``--scale logistic``; with ``--iwae-k 100``, as
nats and bits per dimension of the 8-bit data. tfvae starts these from data
(``--output-bias-from-data``: the decoder's output locations at the training
mean and its scales at the data's spread per pixel). Their test ELBO varies
by tens of nats from seed to seed: compare several ``--seeds``.
Targets (issues 2, 3, 14): Gaussian VAE within 1 nat of the PyTorch VAE peer
(ELBO and IWAE k=1000); Bernoulli VAE `ema` within 2 nats of the PyTorch
Bernoulli peer at z=20; the best estimator >= 10 nats above it at z=200;
gaussian-real within 5 nats of its peer's ELBO; logistic at or below its
peer's bits per dimension (IWAE k=100).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_BENCH = HERE.parent.parent / "shared" / "bench"


_BITS = {"binarize": "static"}
# The data-dependent start (`--output-bias-from-data`): observation locations at
# the training mean and scales at its spread per pixel, as the README advises.
_PIXELS = {"model": "gaussian", "hidden": (400,), "binarize": "none",
           "output_bias_from_data": True}
#: Benchmark name -> (tfvae options, peer script or None, peer arguments, peer has IWAE).
SETUPS = {
    "gaussian": ({"model": "gaussian", "hidden": (400,), **_BITS}, "peer_torch_vae.py", [],
                 True),
    "bernoulli": ({"model": "bernoulli", "hidden": (400,), **_BITS}, "peer_torch_bvae.py", [],
                  True),
    "ae-gmm": ({"model": "ae-gmm", "hidden": (400,), **_BITS}, None, [], False),
    # The peer's conv VAE: Conv 32/64 stride 2 to the code, no dense hidden layer.
    "conv": ({"model": "gaussian", "arch": "conv", "hidden": (), **_BITS},
             "peer_torch_convvae.py", [], False),
    # 8-bit pixels as they are (issue 14): a Gaussian with the decoder's scale on
    # dequantized pixels, beside the peer's; the discretized logistic beside the peer's.
    "gaussian-real": ({**_PIXELS, "likelihood": "gaussian", "obs_scale": "decoder"},
                      "peer_torch_gvae.py", ["--scale", "pixel"], True),
    "gaussian-shared": ({**_PIXELS, "likelihood": "gaussian", "obs_scale": "shared"},
                        "peer_torch_gvae.py", ["--scale", "shared"], True),
    "logistic": ({**_PIXELS, "likelihood": "logistic"}, "peer_torch_gvae.py",
                 ["--scale", "logistic"], True),
    "logistic-mixture": ({**_PIXELS, "likelihood": "logistic", "obs_components": 5}, None, [],
                         False),
}


@contextlib.contextmanager
def adam_epsilon(epsilon: float | None):
    """tfvae's Adam with another epsilon than Keras' (an experiment: tfvae has no option)."""
    if epsilon is None:
        yield
        return
    from tfvae._keras import keras

    adam = keras.optimizers.Adam
    original = adam.__init__
    adam.__init__ = functools.partialmethod(original, epsilon=epsilon)
    try:
        yield
    finally:
        adam.__init__ = original


def run_tfvae(args, model: str, latent: int, seed: int, estimator: str | None) -> dict:
    import tfvae
    from tfvae.evaluation import evaluate
    from tfvae.runs.run_data import load_data

    options = dict(
        data_dir=args.data_dir, val_fraction=0.0,
        epochs=args.epochs, latent_dim=latent, batch_size=128, lr=1e-3,
        seed=seed, iwae_k=1, **SETUPS[model][0],
    )
    for item in args.set:  # --set name=JSON value, e.g. output_bias_from_data=false
        name, _, value = item.partition("=")
        options[name] = json.loads(value)
    if args.init:
        options["init"] = args.init
    if args.head_init:
        options["head_init"] = args.head_init
    if estimator:
        options["estimator"] = estimator
        options["num_samples"] = args.num_samples
    with tempfile.TemporaryDirectory() as tmp, adam_epsilon(args.adam_epsilon):
        start = time.perf_counter()
        run = tfvae.train(out=Path(tmp) / "run", verbose=0, figures=False, **options)
        wall = time.perf_counter() - start
        history = run.history
        seconds = sorted(h["seconds"] for h in history[1:]) or [history[0]["seconds"]]
        median = seconds[len(seconds) // 2]
        _, splits = load_data(run.config)
        n_train = len(splits.train)
        result = {
            "program": "tfvae",
            "model": model,
            "arch": run.config.arch,
            "estimator": estimator,
            "init": run.model.init,  # as the model resolved it (its default without --init)
            "head_init": run.model.head_init or run.model.init,
            "set": args.set,
            "adam_epsilon": args.adam_epsilon,
            "latent": latent,
            "seed": seed,
            "epochs": args.epochs,
            "sec_per_epoch_median": median,
            "train_images_per_sec": n_train / median,
            "train_wall_sec": wall,
        }
        levels = splits.dequantized_levels
        ev = evaluate(run.model, splits.test, k=1, seed=seed, dequantized_levels=levels)
        result["test_elbo"] = ev["elbo"]
        result["test_kl"] = ev["kl"]
        result["active_units"] = ev["active_units"]
        if "bits_per_dim" in ev:
            result["test_elbo_bpd"] = ev["bits_per_dim"]
        if args.iwae_k:
            start = time.perf_counter()
            iw = evaluate(run.model, splits.test, k=args.iwae_k, seed=seed,
                          dequantized_levels=levels)
            result["test_iwae_k"] = args.iwae_k
            result["test_log_likelihood_iwae"] = iw["log_likelihood"]
            if "bits_per_dim_iwae" in iw:
                result["test_log_likelihood_bpd"] = iw["bits_per_dim_iwae"]
            result["iwae_sec"] = time.perf_counter() - start
    return result


def run_peer(args, model: str, latent: int, seed: int) -> dict:
    _, script, extra, has_iwae = SETUPS[model]
    cmd = [args.peer_python, str(Path(args.bench_dir) / script), "--data-dir", args.data_dir,
           "--epochs", str(args.epochs), "--seed", str(seed + 1)] + extra
    if model == "bernoulli":
        cmd += ["--latent", str(latent)]
    if args.iwae_k and has_iwae:
        cmd += ["--iwae-k", str(args.iwae_k)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result.update(program="peer", model=model, latent=latent, seed=seed)
    return result


def main():
    # As the tfvae command does (cli/main.py): oneDNN kernels on unless the user says.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.keras is tf_keras, as in the command
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--models", nargs="+", default=["gaussian"], choices=list(SETUPS))
    p.add_argument("--estimators", nargs="+", default=["ema"])
    p.add_argument("--latent", nargs="+", type=int, default=[20])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iwae-k", type=int, default=1000)
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--init", default=None, help="tfvae's --init [default: tfvae's default].")
    p.add_argument("--head-init", default=None, help="tfvae's --head-init [default: --init].")
    p.add_argument("--adam-epsilon", type=float, default=None,
                   help="Adam's epsilon for tfvae [default: Keras' 1e-7; PyTorch's is 1e-8].")
    p.add_argument("--no-tfvae", action="store_true", help="Run only the peers.")
    p.add_argument("--set", action="append", default=[], metavar="NAME=JSON",
                   help="Another tfvae option, e.g. --set output_bias_from_data=false.")
    p.add_argument("--peer-python", default=None,
                   help="Python of a venv with torch==2.13.0 to run the peers side by side.")
    p.add_argument("--bench-dir", default=str(DEFAULT_BENCH))
    args = p.parse_args()
    if not os.path.isdir(args.data_dir):
        sys.exit(f"{args.data_dir} not found: apt-get install dataset-fashion-mnist")
    rows = []
    for model in args.models:
        for latent in args.latent:
            for seed in args.seeds:
                if args.peer_python and SETUPS[model][1]:  # no peer for the AE + GMM
                    rows.append(run_peer(args, model, latent, seed))
                    print(json.dumps(rows[-1]), flush=True)
                estimators = args.estimators if model == "bernoulli" else [None]
                for estimator in [] if args.no_tfvae else estimators:
                    rows.append(run_tfvae(args, model, latent, seed, estimator))
                    print(json.dumps(rows[-1]), flush=True)
    if len(args.seeds) > 1:
        for line in summarize(rows):
            print(json.dumps(line), flush=True)


_FIGURES = ("test_elbo", "test_elbo_bpd", "test_log_likelihood_iwae", "test_log_likelihood_bpd")


def summarize(rows: list) -> list:
    """Mean and sample standard deviation over seeds, per program, model, latent, estimator."""
    import statistics

    groups: dict = {}
    for row in rows:
        key = (row["program"], row["model"], row["latent"], row.get("estimator"),
               row.get("init"), row.get("head_init"))
        groups.setdefault(key, []).append(row)
    lines = []
    for (program, model, latent, estimator, init, head_init), runs in groups.items():
        line = {"summary": "mean (sd) over seeds", "program": program, "model": model,
                "latent": latent, "estimator": estimator, "seeds": len(runs)}
        if init:
            line.update(init=init, head_init=head_init)
        for name in _FIGURES:
            values = [r[name] for r in runs if name in r]
            if len(values) == len(runs):
                line[name] = round(statistics.fmean(values), 4)
                line[name + "_sd"] = round(statistics.stdev(values), 4) if len(values) > 1 else 0
        lines.append(line)
    return lines


if __name__ == "__main__":
    main()
