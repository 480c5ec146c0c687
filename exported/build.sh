#!/usr/bin/env bash
# Rebuilds the reference exports in this folder: bash exported/build.sh
#
# Trains the three default models (tfvae train defaults: 784-400-20 MLP, 20
# epochs, embedded mnist-10k, seed 0) in a temporary folder and exports each
# to exported/<model>/ as float16 and int8 (dynamic-range) LiteRT files plus
# manifest.json. About 10 minutes on 2 CPU cores. PYTHON picks the interpreter.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
python=${PYTHON:-python}
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "$python" - "$here" "$runs" <<'PY'
import sys
from pathlib import Path

import tfvae
from tfvae.export import export_run

here, runs = Path(sys.argv[1]), Path(sys.argv[2])
for model in ("gaussian", "bernoulli", "ae-gmm"):
    run = tfvae.train(out=runs / model, model=model, verbose=0, figures=False)
    print(f"{model}: test elbo {run.evaluation['elbo']:.2f}", flush=True)
    manifest = export_run(run.path, here / model, formats="tflite",
                          precisions=("float16", "int8"), overwrite=True)
    size = sum(f["bytes"] for f in manifest["files"].values())
    print(f"{model}: exported {len(manifest['files'])} files, {size / 1e6:.2f} MB", flush=True)
PY
