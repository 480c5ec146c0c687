"""Mixed precision against float32: images/s and test ELBO of the same run.

Each round runs ``tfvae.train`` once per policy, alternating, each in its own
process: the default Gaussian VAE (784-400-20, dynamic bits, batch 128, Adam
1e-3, the fused path) on Fashion-MNIST for ``--epochs`` epochs, with the
policy set by ``tfvae.keras.mixed_precision.set_global_policy`` before the
call. It prints one JSON line per run (the median images/s of the epochs
after the first, which compiles; the test ELBO; the load average before it)
and a summary line per policy with the medians. An epoch's seconds are
those of the run's record (its validation pass included).

    python benchmarks/mixed_precision.py --epochs 10 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys
opts = json.loads(sys.argv[1])
import tfvae
tfvae.keras.mixed_precision.set_global_policy(opts["policy"])
run = tfvae.train(data_dir=opts["data_dir"], epochs=opts["epochs"], out=opts["out"],
                  verbose=0, figures=False, iwae_k=opts["iwae_k"])
n = run.status["data"]["train"]
rates = [n / row["seconds"] for row in run.history[1:]]
print(json.dumps({"images_per_sec": sorted(rates)[len(rates) // 2],
                  "test_elbo": run.evaluation["elbo"],
                  "test_log_likelihood": run.evaluation["log_likelihood"]}))
"""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--iwae-k", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--policies", nargs="+", default=["float32", "mixed_bfloat16"])
    args = parser.parse_args(argv)
    results = {p: [] for p in args.policies}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TF_USE_LEGACY_KERAS": "1"}
    for i in range(args.rounds):
        for policy in args.policies:
            load = os.getloadavg()[0]
            with tempfile.TemporaryDirectory() as tmp:
                opts = {"policy": policy, "data_dir": args.data_dir, "epochs": args.epochs,
                        "iwae_k": args.iwae_k, "out": os.path.join(tmp, "run")}
                done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(opts)], env=env,
                                      capture_output=True, text=True, check=True)
            row = {"round": i + 1, "policy": policy, "load_before": load,
                   **json.loads(done.stdout.strip().splitlines()[-1])}
            results[policy].append(row)
            print(json.dumps(row), flush=True)
    for policy, rows in results.items():
        print(json.dumps({"summary": policy, "rounds": len(rows),
                          "images_per_sec": statistics.median(r["images_per_sec"] for r in rows),
                          "test_elbo": statistics.median(r["test_elbo"] for r in rows)}))


if __name__ == "__main__":
    main()
