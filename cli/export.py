"""``tfvae export``: a trained run to SavedModel and LiteRT files (see :mod:`tfvae.export`)."""

from __future__ import annotations

import click
from tfvae_cli.common import CONTEXT, handle_errors


@click.command(context_settings=CONTEXT)
@click.argument("run_dir", type=click.Path())
@click.option("--format", "fmt", type=click.Choice(["savedmodel", "tflite", "all"]),
              default="all", show_default=True, help="What to write.")
@click.option("--quantize", type=click.Choice(["none", "float16", "int8", "all"]),
              multiple=True, default=("all",), show_default=True,
              help="LiteRT precisions: none (float32), float16, int8, or all three; "
              "repeat for several (--quantize float16 --quantize int8).")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Export directory to create (must be empty or a previous export).")
@click.option("--overwrite", is_flag=True,
              help="Replace a previous export in --out, all at once when the new one is "
              "complete; refused if --out holds files its manifest does not list.")
@click.option("--representative", type=int, default=0, show_default=True,
              help="Calibrate full-integer int8 on this many training images "
              "(0: dynamic-range int8, weights only).")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best",
              show_default=True)
@handle_errors
def export(run_dir, fmt, quantize, out, overwrite, representative, checkpoint):
    """Export a run's decoder, sampler and encoder for deployment.

    Writes manifest.json, saved_model/ (signatures decode, sample, encode) and
    one LiteRT file per signature and precision (decoder.tflite,
    sampler_int8.tflite, encoder_float16.tflite, ...). Samplers take their
    noise as input; `tfvae sample EXPORT_DIR` draws it.

    The export is built in a hidden folder beside --out and moved in only
    when every file is checked: a failed or stopped (Ctrl-C, SIGTERM: exit
    130) export leaves --out as it was, and the next export cleans up after
    a killed one. A second export into the same --out is refused while one
    runs.

    \b
    Examples:
      tfvae export runs/z20 --out runs/z20-export
      tfvae export runs/z20 --format tflite --quantize int8 --out z20-int8
      tfvae export runs/z20 --format tflite --quantize float16 --quantize int8 --out z20-small
      tfvae export runs/z20 --quantize int8 --representative 500 --out z20-full-int8
    """
    from tfvae.export import manifest as layout
    from tfvae.runs.layout import check_run_dir

    formats = layout.FORMATS if fmt == "all" else (fmt,)
    names = {v: k for k, v in layout.QUANTIZE_NAMES.items()}
    precisions = tuple(layout.PRECISIONS if q == "all" else (names[q],) for q in quantize)
    precisions = tuple(dict.fromkeys(p for group in precisions for p in group))
    if representative < 0:
        raise click.ClickException(f"--representative must be >= 0, got {representative}")
    check_run_dir(run_dir)  # paths first: refuse before TensorFlow loads
    layout.check_out(out, overwrite)
    from tfvae.export import export_run

    manifest = export_run(
        run_dir, out, formats=formats, precisions=precisions,
        representative=representative, overwrite=overwrite, which=checkpoint,
    )
    total = sum(f["bytes"] for f in manifest["files"].values())
    click.echo(f"exported {manifest['model_type']} model to {out}: "
               f"{len(manifest['files'])} files listed in manifest.json, {total / 1e6:.2f} MB")
