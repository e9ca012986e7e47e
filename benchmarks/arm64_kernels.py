"""Which kernels make an int8 TFLite file give other outputs on ARM64 than on x86.

    python benchmarks/arm64_kernels.py runs/arm64_parity/tinyseg-isic2017/export/tinyseg_int8.tflite \\
        --data isic2017:../shared/data/isic2017/val --images 40

The same file and the same preprocessed pixels run with two op resolvers of ai-edge-litert, on this
x86 host and under QEMU on each emulated ARM64 CPU: XNNPACK (the default delegate, what apps and
edgederm run) and TFLite's builtin reference kernels (portable C++ with the fixed-point
requantization of the TFLite int8 spec). Every pair of the resulting outputs is compared. If the
reference kernels agree bit for bit across the ISAs while XNNPACK does not, the difference on a
phone comes from XNNPACK's per-ISA int8 kernels, not from the model, its converter or the runtime
version. Writes benchmarks/results/arm64_kernels.{json,md}.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
from _results import add_results_options, command_line, reread, write_results

from edgederm.core.log import configure, get_logger

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RESOLVERS = ("xnnpack", "reference")
logger = get_logger("benchmarks.arm64_kernels")

# Runs as-is on the host's Python and on the emulated one: numpy and ai-edge-litert only.
PROBE = """
import sys, numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType
kinds = {"xnnpack": OpResolverType.AUTO, "reference": OpResolverType.BUILTIN_REF}
x = np.load(sys.argv[2])["x"]
out = {}
for name, kind in kinds.items():
    interpreter = Interpreter(model_path=sys.argv[1], experimental_op_resolver_type=kind, num_threads=1)
    interpreter.allocate_tensors()
    given, taken = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for image in x:
        interpreter.set_tensor(given["index"], image[None].astype(given["dtype"]))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(taken["index"]).copy())
    out[name] = np.concatenate(rows)
np.savez(sys.argv[3], **out)
"""


def inputs(artifact: Path, data: str, images: int) -> np.ndarray:
    """Evenly spaced images of ``data``, preprocessed as the artifact's spec says, in the file's input layout."""
    from PIL import Image

    from edgederm.data.layouts import load_dataset
    from edgederm.runtime import Predictor

    predictor = Predictor.load(artifact)
    samples = load_dataset(data).samples
    chosen = [samples[i] for i in np.linspace(0, len(samples) - 1, min(images, len(samples))).round().astype(int)]
    preprocess = predictor.spec.preprocess
    pixels = np.stack([preprocess.fit(Image.open(s.image_path).convert("RGB")) for s in chosen])
    layout = predictor.spec.artifact.get("input", {}).get("layout", "NHWC")
    return preprocess.normalize(pixels, layout).astype(np.float32)


def compare(a: np.ndarray, b: np.ndarray) -> dict:
    row = {"identical": bool(np.array_equal(a, b)), "max_abs_diff": float(np.abs(a - b).max())}
    if a.ndim == 4:  # a segmenter's lesion probabilities: the mask at 0.5
        row["pixels_differing"] = float(((a > 0.5) != (b > 0.5)).mean())
    else:
        row["top1_agreement"] = float((a.argmax(-1) == b.argmax(-1)).mean())
    return row


def measure(artifact: Path, data: str, images: int, cpus: list[str]) -> dict:
    from edgederm.evaluate.verify.emulation import run_python, setup_arm64

    env = setup_arm64()
    with tempfile.TemporaryDirectory(prefix="arm64-kernels-") as tmp:
        work = Path(tmp)
        probe, given = work / "probe.py", work / "inputs.npz"
        probe.write_text(PROBE)
        np.savez(given, x=inputs(artifact, data, images))
        outputs = {}
        subprocess.run([sys.executable, str(probe), str(artifact), str(given), str(work / "x86.npz")], check=True, capture_output=True)
        outputs["x86"] = dict(np.load(work / "x86.npz"))
        for cpu in cpus:
            logger.info(f"{artifact.name} on emulated {cpu}")
            run_python(env, cpu, [str(probe), str(artifact), str(given), str(work / f"{cpu}.npz")])
            outputs[cpu] = dict(np.load(work / f"{cpu}.npz"))
    runs = [(where, resolver) for where in outputs for resolver in RESOLVERS]
    pairs = []
    for (w1, r1), (w2, r2) in itertools.combinations(runs, 2):
        pairs.append({"a": f"{w1} {r1}", "b": f"{w2} {r2}", **compare(outputs[w1][r1], outputs[w2][r2])})
    return {"artifact": str(artifact.relative_to(REPO) if artifact.is_relative_to(REPO) else artifact), "images": images, "pairs": pairs}


def markdown(payload: dict) -> str:
    lines = [
        "# Which kernels move int8 TFLite outputs between x86 and ARM64",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"Date: {payload['date']}. Host: `{payload['machine']['platform']}`, {payload['machine']['cpus']} CPUs; ARM64 CPUs "
        "emulated by QEMU user mode (numerics only). Each artifact runs with ai-edge-litert's XNNPACK delegate and with "
        "TFLite's builtin reference kernels on the same preprocessed pixels, 1 thread.",
        "",
    ]
    if payload.get("note"):
        lines += [payload["note"], ""]
    for entry in payload["artifacts"]:
        segmenter = any("pixels_differing" in p for p in entry["pairs"])
        lines += [f"## `{entry['artifact']}` ({entry['images']} images)", ""]
        measure_name = "mask pixels differing" if segmenter else "top-1 agreement"
        lines += [f"| run | run | bit-identical | largest output difference | {measure_name} |", "|---|---|:---:|---:|---:|"]
        for p in entry["pairs"]:
            value = f"{100 * p['pixels_differing']:.3f}%" if segmenter else f"{100 * p['top1_agreement']:.1f}%"
            lines.append(f"| {p['a']} | {p['b']} | {'yes' if p['identical'] else 'no'} | {p['max_abs_diff']:.4f} | {value} |")
        lines.append("")
    if payload.get("findings"):
        lines += ["## What it shows", "", *payload["findings"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    configure()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path, nargs="*", help="int8 .tflite files")
    parser.add_argument("--data", help="the images (a dataset spec); evenly spaced ones are taken")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--cpus", default="cortex-a53,cortex-a76")
    parser.add_argument("--findings", type=Path, help="a Markdown file of what the table shows, kept with the results")
    add_results_options(parser, "arm64_kernels")
    args = parser.parse_args(argv)
    out = RESULTS / "arm64_kernels.json"
    if args.markdown_only:
        payload = reread(out, args.note)
    else:
        if not args.artifacts or not args.data:
            parser.error("give the .tflite files and --data")
        cpus = [c.strip() for c in args.cpus.split(",") if c.strip()]
        payload = {
            "command": command_line("arm64_kernels", argv),
            "date": date.today().isoformat(),
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
            "data": args.data,
            "artifacts": [measure(path.resolve(), args.data, args.images, cpus) for path in args.artifacts],
            "note": args.note,
        }
    if args.findings:
        payload["findings"] = args.findings.read_text().strip().splitlines()
    write_results(out, payload, markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
