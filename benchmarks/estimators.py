"""Every binary-latent estimator (and mean-field inference) on the DisARM protocol, one table.

The protocol of ``sbn.py`` (the official DisARM code's: Fashion-MNIST with
dynamic binarization, 200 binary latents, batch 50, Adam 1e-4 for the
networks and SGD 1e-2 for the prior's logits, 1,000 steps an epoch), for the
``linear`` and ``nonlinear`` one-layer models, every estimator trained for the
same steps. At each ``--eval-steps`` it prints one JSON row (as ``sbn.py``:
the one-sample training ELBO, the 100-sample bounds on validation and test,
training images/s); the last row of a run adds the encoder gradient's
variance at the final parameters (``tfvae diagnose``'s measure: trace of its
covariance over ``--draws`` draws on 50 fixed training images).

``mean-field`` trains the linear model without an encoder (``--model sbn
--stochastic-layers 1 --inference mean-field``, Saul, Jaakkola & Jordan
1996): its bounds are those of the test examples' own fitted mean-field
parameters, its 100-sample bound samples that fitted posterior.

    python benchmarks/estimators.py --models nonlinear linear --eval-steps 4000
    python benchmarks/estimators.py --models nonlinear --estimators arm relax \
        --eval-steps 4000 12000 20000 34000 --official runs.jsonl

``--official FILE`` puts the official DisARM code's figures beside tfvae's:
JSON lines ``{"estimator", "model", "step", "train_elbo", "test_bound_k100"}``
(log-likelihoods, higher is better) from its runs on the same machine.
The summary at the end is one line per model and estimator at the last step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sbn  # noqa: E402  (the protocol and its training loop)

#: Overrides of the protocol's configuration for mean-field inference (linear only).
MEAN_FIELD = dict(model="sbn", stochastic_layers=1, inference="mean-field", center_input=False)


def _variance(estimator: str, draws: int):
    def extra(model, splits, train_bits):
        from tfvae.diagnostics import gradient_variance

        if not hasattr(model, "estimate"):  # mean-field inference: no gradient estimator
            return {}
        stats = gradient_variance(model, train_bits[:50], estimators=[estimator],
                                  num_draws=draws, seed=0)[estimator]
        return {"grad_variance": stats["variance"], "grad_norm_snr": stats["norm_snr"],
                "biased": stats["biased"]}

    return extra


def _official(path) -> dict:
    figures = {}
    if path:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                figures[(row["model"], row["estimator"], row["step"])] = row
    return figures


def main():
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    from tfvae import options

    choices = list(options.ESTIMATORS) + ["mean-field"]
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist",
                   help="Fashion-MNIST IDX files (apt-get install dataset-fashion-mnist)")
    p.add_argument("--models", nargs="+", default=["nonlinear", "linear"],
                   choices=["nonlinear", "linear"])
    p.add_argument("--estimators", nargs="+", default=choices, choices=choices,
                   help="estimators to train, one run each (mean-field: linear model only) "
                        "[default: all]")
    p.add_argument("--eval-steps", nargs="+", type=int, default=[4000],
                   help="steps (multiples of 1,000) at which to evaluate; the last ends "
                        "training [default: 4000]")
    p.add_argument("--draws", type=int, default=50, help="gradient draws for the variance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--official", default=None, help="JSON lines of the official code's runs")
    args = p.parse_args()
    args.official_images_per_sec = sbn.OFFICIAL_IMAGES_PER_SEC
    if not os.path.isdir(args.data_dir):
        sys.exit(f"{args.data_dir} not found: apt-get install dataset-fashion-mnist")
    if any(s <= 0 or s % sbn.STEPS_PER_EPOCH for s in args.eval_steps):
        sys.exit(f"--eval-steps must be positive multiples of {sbn.STEPS_PER_EPOCH}")
    official = _official(args.official)
    last = max(args.eval_steps)
    summary = []
    for name in args.models:
        for estimator in args.estimators:
            if estimator == "mean-field":
                if name != "linear":
                    continue
                config = sbn.protocol_config(args, name, "ema", **MEAN_FIELD)
            else:
                config = sbn.protocol_config(args, name, estimator)
            rows = sbn.run(args, name, estimator, config=config, label=estimator,
                           extra=_variance(estimator, args.draws))
            final = rows[-1]
            line = {"summary": f"step {last}", "model": name, "estimator": estimator,
                    **{key: final.get(key) for key in (
                        "train_elbo", "test_bound_k100", "grad_variance",
                        "steady_images_per_sec")}}
            anchor = official.get((name, estimator, last))
            if anchor:
                line["official_train_elbo"] = anchor["train_elbo"]
                line["official_test_bound_k100"] = anchor["test_bound_k100"]
                line["test_gap_to_official"] = final["test_bound_k100"] - anchor["test_bound_k100"]
            summary.append(line)
    for line in summary:
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
