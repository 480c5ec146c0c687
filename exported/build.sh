#!/usr/bin/env bash
# Rebuilds the reference exports in this folder: bash exported/build.sh [OUT]
#
# Trains the three default models (tfvae train defaults: 784-400-20 MLP, 20
# epochs, embedded mnist-10k, seed 0) in a temporary folder and exports each
# to OUT/<model>/ as float16 and int8 (dynamic-range) LiteRT files plus
# manifest.json. OUT defaults to this folder (tests/test_exported.py rebuilds
# into another one to compare). PYTHON picks the interpreter. Nothing is
# written outside OUT: the runs and TensorFlow's temporary files live in a
# temporary folder removed on exit. EPOCHS overrides the 20 epochs (the
# slow test rebuilds with fewer: it compares structure, not learned values).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
out=${1:-$here}
python=${PYTHON:-python}
runs=$(mktemp -d)
trap 'rm -rf "$runs"' EXIT
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
mkdir -p "$out"
TMPDIR="$runs" PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" \
    "$python" - "$out" "$runs" "${EPOCHS:-20}" <<'PY'
import sys
from pathlib import Path

import tfvae
from tfvae.export import export_run

out, runs, epochs = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for model in ("gaussian", "bernoulli", "ae-gmm"):
    run = tfvae.train(out=runs / model, model=model, epochs=epochs, verbose=0, figures=False)
    print(f"{model}: test elbo {run.evaluation['elbo']:.2f}", flush=True)
    manifest = export_run(run.path, out / model, formats="tflite",
                          precisions=("float16", "int8"), overwrite=True)
    size = sum(f["bytes"] for f in manifest["files"].values())
    print(f"{model}: exported {len(manifest['files'])} files, {size / 1e6:.2f} MB", flush=True)
PY
