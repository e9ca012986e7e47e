"""Which kernels make an int8 TFLite or ONNX file give other outputs on ARM64 than on x86.

    python benchmarks/arm64_kernels.py edgederm/zoo/tinyseg-isic2017/tinyseg-isic2017_int8.tflite \\
        runs/arm64_parity/lite0-ham10000/export/efficientnet_lite0_int8.onnx \\
        --data isic2017:../shared/data/isic2017/val --images 24

The same file and the same preprocessed pixels run two ways, on this x86 host and under QEMU on each
emulated ARM64 CPU, and every pair of the resulting outputs is compared:

- a ``.tflite`` with two op resolvers of ai-edge-litert: XNNPACK (the default delegate, what apps and
  edgederm run) and TFLite's builtin reference kernels (portable C++ with the fixed-point
  requantization of the TFLite int8 spec);
- an ``.onnx`` in onnxruntime with all graph optimizations (``fused``: the QDQ groups become
  QLinearConv, QLinearAdd and QGemm integer kernels, what apps and edgederm run) and with none
  (``unfused``: every DequantizeLinear -> op -> QuantizeLinear computed in float). For the fused run,
  every activation QuantizeLinear output is also read and compared with x86's, tensor by tensor, to
  find the first operator whose integers differ.

If the reference kernels agree bit for bit across the ISAs while the optimized ones do not, the
difference on a phone comes from the runtime's per-ISA int8 kernels, not from the model, its converter
or the runtime version. The ``.onnx`` files are the ones ``benchmarks/arm64_parity.py`` exports (the
zoo ships only TFLite). Writes benchmarks/results/arm64_kernels.{json,md}.
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
RESOLVERS = {".tflite": ("xnnpack", "reference"), ".onnx": ("fused", "unfused")}
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


# The same for onnxruntime (the emulated Python has no onnx package: the host writes the copy of the file that also
# outputs every activation tensor). With a last argument (x86's output file), the tensors are compared inside the
# emulator, and only the differences are written.
PROBE_ONNX = """
import sys, numpy as np, onnxruntime as ort
path, exposed, given, written = sys.argv[1:5]
x = np.load(given)["x"]
levels = {"fused": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "unfused": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
def run(model, level):
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.graph_optimization_level = 1, level
    runner = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in runner.get_outputs()]
    rows = [runner.run(names, {runner.get_inputs()[0].name: image[None]}) for image in x]
    return names, {name: np.concatenate([r[k] for r in rows]) for k, name in enumerate(names)}
out = {}
for name, level in levels.items():
    (final, *_), outputs = run(path, level)
    out[name] = outputs[final]
(_, *tensors), layers = run(exposed, levels["fused"])
out["exposed_final_identical"] = np.array(np.array_equal(layers[final], out["fused"]))
if len(sys.argv) > 5:
    reference = np.load(sys.argv[5])
    steps = [np.abs(layers[t].astype(np.int32) - reference["layer:" + t].astype(np.int32)) for t in tensors]
    out["layer_max_steps"] = np.array([int(s.max()) for s in steps])
    out["layer_share_differing"] = np.array([float((s > 0).mean()) for s in steps])
else:
    out.update({"layer:" + t: layers[t] for t in tensors})
np.savez(written, **out)
"""


def exposed_copy(artifact: Path, into: Path) -> tuple[Path, list[str], list[str]]:
    """A copy of an ONNX file that also outputs each activation QuantizeLinear's integers; their names and writers."""
    import onnx

    model = onnx.load(artifact)
    weights = {init.name for init in model.graph.initializer}
    quantizers = [node for node in model.graph.node if node.op_type == "QuantizeLinear" and node.input[0] not in weights]
    writer = {output: node.op_type for node in model.graph.node for output in node.output}
    model.graph.output.extend(onnx.ValueInfoProto(name=node.output[0]) for node in quantizers)
    onnx.save(model, into)
    return into, [node.output[0] for node in quantizers], [writer.get(node.input[0], "input") for node in quantizers]


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
    resolvers, onnx_file = RESOLVERS[artifact.suffix], artifact.suffix == ".onnx"
    with tempfile.TemporaryDirectory(prefix="arm64-kernels-") as tmp:
        work = Path(tmp)
        probe, given, host = work / "probe.py", work / "inputs.npz", work / "x86.npz"
        probe.write_text(PROBE_ONNX if onnx_file else PROBE)
        np.savez(given, x=inputs(artifact, data, images))
        files = [str(artifact)]
        if onnx_file:
            exposed, tensors, writers = exposed_copy(artifact, work / "exposed.onnx")
            files.append(str(exposed))
        outputs, layers = {}, {}
        subprocess.run([sys.executable, str(probe), *files, str(given), str(host)], check=True, capture_output=True)
        with np.load(host) as written:
            outputs["x86"] = {resolver: written[resolver] for resolver in resolvers}
            exposed_on_x86 = bool(written["exposed_final_identical"]) if onnx_file else None
        for cpu in cpus:
            logger.info(f"{artifact.name} on emulated {cpu}")
            target = work / f"{cpu}.npz"
            run_python(env, cpu, [str(probe), *files, str(given), str(target), *([str(host)] if onnx_file else [])])
            with np.load(target) as written:
                outputs[cpu] = {resolver: written[resolver] for resolver in resolvers}
                if onnx_file:
                    layers[cpu] = tensor_by_tensor(written, tensors, writers, exposed_on_x86)
    runs = [(where, resolver) for where in outputs for resolver in resolvers]
    pairs = []
    for (w1, r1), (w2, r2) in itertools.combinations(runs, 2):
        pairs.append({"a": f"{w1} {r1}", "b": f"{w2} {r2}", **compare(outputs[w1][r1], outputs[w2][r2])})
    entry = {"artifact": str(artifact.relative_to(REPO) if artifact.is_relative_to(REPO) else artifact), "images": images, "pairs": pairs}
    if layers:
        entry["tensors_vs_x86"] = layers
    return entry


def tensor_by_tensor(written: np.lib.npyio.NpzFile, tensors: list[str], writers: list[str], exposed_on_x86: bool) -> dict:
    """An emulated CPU's activation integers (fused run) against x86's, in graph order."""
    rows = [
        {"tensor": tensor, "op": op, "max_steps": int(steps), "share_differing": float(share)}
        for tensor, op, steps, share in zip(tensors, writers, written["layer_max_steps"], written["layer_share_differing"], strict=True)
    ]
    first = next((i for i, row in enumerate(rows) if row["max_steps"] > 0), None)
    return {
        # reading every tensor must not change what the file computes, or the comparison would not be of the same kernels
        "reading_tensors_changes_no_output": exposed_on_x86 and bool(written["exposed_final_identical"]),
        "first_differing": first,
        "tensors": rows,
    }


def markdown(payload: dict) -> str:
    lines = [
        "# Which kernels move int8 TFLite and ONNX outputs between x86 and ARM64",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"Date: {payload['date']}. Host: `{payload['machine']['platform']}`, {payload['machine']['cpus']} CPUs; ARM64 CPUs "
        "emulated by QEMU user mode (numerics only). On the same preprocessed pixels, 1 thread, each `.tflite` runs with "
        "ai-edge-litert's XNNPACK delegate and with TFLite's builtin reference kernels, and each `.onnx` in onnxruntime "
        "with every graph optimization (`fused`: QLinearConv, QLinearAdd and QGemm integer kernels) and with none "
        "(`unfused`: each DequantizeLinear -> op -> QuantizeLinear in float). A step is one quantization level of the tensor compared.",
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
        for cpu, layers in entry.get("tensors_vs_x86", {}).items():
            lines += tensor_lines(cpu, layers)
    if payload.get("findings"):
        lines += ["## What it shows", "", *payload["findings"], ""]
    return "\n".join(lines)


def share(fraction: float) -> str:
    return "<0.001%" if 0 < fraction < 1e-5 else f"{100 * fraction:.3f}%"


def steps(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def tensor_lines(cpu: str, layers: dict) -> list[str]:
    rows, first = layers["tensors"], layers["first_differing"]
    head = f"Fused run on {cpu}, every activation tensor against x86's ({len(rows)} tensors"
    head += "; reading them changes no output)" if layers["reading_tensors_changes_no_output"] else "; reading them CHANGES the output)"
    if first is None:
        return [head + ": all bit-identical.", ""]
    differing = [row for row in rows if row["max_steps"] > 0]
    largest = max(differing, key=lambda row: row["max_steps"])
    return [
        head + ":",
        "",
        "| tensors bit-identical before the first difference | first differing tensor (written by) | its elements differing "
        "| its largest difference | tensors differing in all | largest difference anywhere |",
        "|---:|---|---:|---:|---:|---:|",
        f"| {first} | `{rows[first]['tensor']}` ({rows[first]['op']}) | {share(rows[first]['share_differing'])} "
        f"| {steps(rows[first]['max_steps'])} | {len(differing)} of {len(rows)} | {steps(largest['max_steps'])} (`{largest['tensor']}`) |",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    configure()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path, nargs="*", help="int8 .tflite and .onnx files")
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
            parser.error("give the .tflite/.onnx files and --data")
        if unknown := [str(path) for path in args.artifacts if path.suffix not in RESOLVERS]:
            parser.error(f"not a .tflite or .onnx file: {', '.join(unknown)}")
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
