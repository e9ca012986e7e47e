"""Segmenter export parity on real data: export each of the zoo's ISIC 2017 segmenters to every format and
quant mode, verify every artifact against torch fp32 on the official ISIC 2017 val images, and collect one table.

    .venv/bin/python benchmarks/segmenter_parity.py            # export + verify + collect
    .venv/bin/python benchmarks/segmenter_parity.py --collect  # only rebuild the json/md
    .venv/bin/python benchmarks/segmenter_parity.py --resume   # keep models already verified

MODELS are the zoo's segmenters (``benchmarks/zoo.py`` holds their training recipes). Writes
benchmarks/results/segmenter_isic2017.{json,md} (params and GFLOPs at the model's input size, every
artifact's Jaccard/Dice and latency at 1 and 2 threads); artifacts and verify reports go to
runs/segparity/.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from edgederm.core.formats import FORMATS
from edgederm.core.log import configure, get_logger

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["zoo:mobilegan-isic2017", "zoo:tinyseg-isic2017"]
RESULT_NAME = "segmenter_isic2017"
SHARED = "../shared/data"  # relative to the repository root, where the commands run
DATA = f"isic2017:{SHARED}/isic2017/val"
CALIB = f"isic2017:{SHARED}/isic2017/train"
OUT = ROOT / "runs" / "segparity"
RESULTS = ROOT / "benchmarks" / "results"
EDGEDERM = str(ROOT / ".venv" / "bin" / "edgederm")
QUANTS = ("fp32", "fp16", "int8", "w8a16")
logger = get_logger("benchmarks.segmenter_parity")


def folder(model: str) -> str:
    return model.removeprefix("zoo:")


def export_command(model: str) -> list[str]:
    return [
        EDGEDERM,
        "export",
        model,
        "--formats",
        ",".join(FORMATS),
        "--quant",
        ",".join(QUANTS),  # a mode a format lacks is a skipped row, which verify leaves out
        "--calib-data",
        CALIB,  # the model's own train split is what calibration takes
        "--out",
        f"runs/segparity/{folder(model)}",
    ]


def verify_command(model: str) -> list[str]:
    export_dir = f"runs/segparity/{folder(model)}"
    return [
        EDGEDERM, "verify", export_dir, "--data", DATA, "--threads", "1,2", "--runs", "50",
        "--json", f"{export_dir}/verify.json", "--report", f"{export_dir}/verify",
    ]  # fmt: skip


def run_logged(command: list[str], log: Path) -> int:
    logger.info("$ " + shlex.join(command))
    with log.open("a") as handle:
        return subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, check=False).returncode


def onnx_int8_attention_ops(model_path: Path) -> dict:
    """Which attention MatMul/Softmax nodes the ONNX int8 graph kept in float, and which it quantized."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    float_attention = [n.name or n.op_type for n in graph.node if n.op_type in ("MatMul", "Softmax")]
    quant_attention = [n.name or n.op_type for n in graph.node if n.op_type in ("QLinearMatMul", "MatMulInteger", "QLinearSoftmax")]
    # QDQ format: a float MatMul is quantized when its inputs come out of DequantizeLinear nodes.
    producers = {out: n for n in graph.node for out in n.output}
    qdq_fed = [
        n.name or n.op_type
        for n in graph.node
        if n.op_type in ("MatMul", "Softmax")
        and all(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in n.input)
    ]
    return {
        "op_counts": dict(sorted(counts.items())),
        "float_matmul_softmax": float_attention,
        "integer_matmul_softmax": quant_attention,
        "qdq_fed_matmul_softmax": qdq_fed,
    }


def tflite_int8_attention_ops(model_path: Path) -> list[dict]:
    """The dtypes at the TFLite int8 graph's attention ops (BATCH_MATMUL, SOFTMAX, and the FULLY_CONNECTED a bmm may become)."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from tflite_runtime.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model_path))
    interpreter.allocate_tensors()
    dtypes = {d["index"]: d["dtype"].__name__ for d in interpreter.get_tensor_details()}
    return [
        {"op": op["op_name"], "inputs": [dtypes[i] for i in op["inputs"] if i >= 0], "outputs": [dtypes[i] for i in op["outputs"]]}
        for op in interpreter._get_ops_details()  # the only public-enough way to list a graph's ops
        if op["op_name"] in ("BATCH_MATMUL", "SOFTMAX", "FULLY_CONNECTED")
    ]


def _latency_ms(row: dict, threads: int = 1) -> float | None:
    from edgederm.evaluate.verify.report import latency_at

    return (latency_at(row, threads) or {}).get("median_ms")


def collect() -> dict:
    from edgederm.core.zoo import resolve

    models = []
    for name in MODELS:
        export_dir = OUT / folder(name)
        verify = json.loads((export_dir / "verify.json").read_text())
        ref = verify["reference"]
        rows = []
        for a in verify["artifacts"]:
            m, d, agree = a.get("metrics") or {}, a.get("deltas") or {}, a.get("agreement") or {}
            rows.append(
                {
                    "format": a["format"],
                    "quant": a["quant"],
                    "path": a["path"],
                    "size_bytes": a["size_bytes"],
                    "jaccard": m.get("jaccard"),
                    "dice": m.get("dice"),
                    "delta_jaccard": d.get("jaccard"),
                    "delta_dice": d.get("dice"),
                    "mask_iou_vs_torch": agree.get("mask_iou"),
                    "min_mask_iou_vs_torch": min(agree["mask_iou_per_image"]) if agree.get("mask_iou_per_image") else None,
                    "images_mask_iou_below_half": sum(v < 0.5 for v in agree["mask_iou_per_image"])
                    if agree.get("mask_iou_per_image")
                    else None,
                    "max_abs_prob_diff": agree.get("max_abs_prob_diff"),
                    "latency_ms_1thread": _latency_ms(a),
                    "latency_ms_2threads": _latency_ms(a, 2),
                    "emulated": a["emulated"],
                    "status": a["status"],
                    "message": a["message"] or "; ".join(a["checks"]),
                }
            )
        # the formats table's order, whatever order the manifest gathered them in
        rows.sort(key=lambda r: (_position(list(FORMATS), r["format"]), _position(QUANTS, r["quant"])))
        onnx_int8 = next((r for r in rows if r["format"] == "onnx" and r["quant"] == "int8" and r["path"]), None)
        tflite_int8 = next((r for r in rows if r["format"] == "tflite" and r["quant"] == "int8" and r["path"]), None)
        models.append(
            {
                "run": name,
                "n_images": verify["n_images"],
                "reference": {
                    "jaccard": ref["metrics"]["jaccard"],
                    "dice": ref["metrics"]["dice"],
                    "latency_ms_1thread": _latency_ms(ref),
                    "latency_ms_2threads": _latency_ms(ref, 2),
                },
                **_complexity(resolve(name)),
                "artifacts": rows,
                "onnx_int8_attention": onnx_int8_attention_ops(export_dir / onnx_int8["path"]) if onnx_int8 else None,
                "tflite_int8_attention": tflite_int8_attention_ops(export_dir / tflite_int8["path"]) if tflite_int8 else None,
                "machine": verify["machine"],
                "verified": verify["created"],
            }
        )
    from edgederm.bench import cpu_features, cpu_model

    return {
        "data": DATA,
        "cpu": f"{cpu_model()} with {', '.join(cpu_features()) or 'none of AVX2, VNNI or dot-product'}",  # the verify runs' machine
        "commands": [shlex.join(c(n)).replace(EDGEDERM, "edgederm") for n in MODELS for c in (export_command, verify_command)],
        "models": models,
    }


def _position(order: Sequence[str], name: str) -> int:
    """``name``'s place in ``order``; names it does not hold sort last."""
    return order.index(name) if name in order else len(order)


def _complexity(run: Path) -> dict:
    from edgederm.models.checkpoint import load_checkpoint
    from edgederm.models.complexity import count_macs, count_parameters

    model, spec = load_checkpoint(run)
    size = spec.preprocess.input_size
    return {"arch": spec.arch, "img_size": size, "params": count_parameters(model), "gflops": 2 * count_macs(model, size) / 1e9}


def _f(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _when_and_where(result: dict) -> list[str]:
    runs = [f"{m['run']} verified {m['verified'][:16].replace('T', ' ')} UTC" for m in result["models"] if m.get("verified")]
    machines = {json.dumps(m["machine"], sort_keys=True) for m in result["models"]}
    machine = result["models"][0]["machine"] if result["models"] else {}
    where = f"`{machine.get('platform', '?')}`, {machine.get('cpus', '?')} CPUs" + (f" ({result['cpu']})" if result.get("cpu") else "")
    if len(machines) > 1:
        where += "; the models were verified on different machines: see the json"
    return [f"{'; '.join(runs)}, on {where}.", ""]


def write_markdown(result: dict, path: Path) -> None:
    lines = [
        "# Segmenters on ISIC 2017: export and parity on the official val set (150 images)",
        "",
        "The models are the zoo's segmenters, trained on ISIC 2017 train by the recipes in `benchmarks/zoo.py`. "
        f"Every segmenter artifact (every format at {', '.join(QUANTS)} where the format has the mode) against the torch fp32",
        "run directory on the official ISIC 2017 validation images. Jaccard/Dice per image at the image's size after the spec's",
        "post-processing, averaged; \"mask IoU vs torch\" is the mean per-image IoU between the artifact's and torch's masks.",
        "int8 and w8a16 are calibrated on the model's own train split (300 images). CoreML runs in the MIL",
        "emulator on Linux (no latency).",
        "",
        "Command (`benchmarks/segmenter_parity.py` runs these for both runs, then builds this file):",
        "",
        "```bash",
        ".venv/bin/python benchmarks/segmenter_parity.py",
        *[c.replace(str(ROOT) + "/", "") for c in result["commands"]],
        "```",
        "",
        *_when_and_where(result),
        "Latency: batch 1 at the run's input size, median of 50 runs after warm-up, on this 2-core CPU; 2-thread numbers",
        "are less reliable here than 1-thread ones (the machine's other work competes for the second core).",
        *([result["note"]] if result.get("note") else []),
        "",
    ]
    for model in result["models"]:
        ref = model["reference"]
        lines += [
            f"## {model['run']}",
            "",
            f"{model['arch']} at {model['img_size']} px: {model['params'] / 1e6:.3f}M parameters, {model['gflops']:.3f} GFLOPs. "
            f"torch fp32: Jaccard {ref['jaccard']:.4f}, Dice {ref['dice']:.4f}, {_f(ref['latency_ms_1thread'], '.2f')} ms @1 thread, "
            f"{_f(ref['latency_ms_2threads'], '.2f')} ms @2 threads.",
            "",
            "| format | quant | size | Jaccard | ΔJaccard | Dice | ΔDice | mask IoU vs torch (mean / min) | ms @1 thr | ms @2 thr | status |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for r in model["artifacts"]:
            size = f"{r['size_bytes'] / 1e6:.2f} MB" if r["size_bytes"] else ""
            iou = f"{r['mask_iou_vs_torch']:.4f} / {r['min_mask_iou_vs_torch']:.4f}" if r["mask_iou_vs_torch"] is not None else ""
            latency = (
                "emulated | emulated" if r["emulated"] else f"{_f(r['latency_ms_1thread'], '.2f')} | {_f(r['latency_ms_2threads'], '.2f')}"
            )
            status = r["status"] + (f": {r['message'][:120]}" if r["status"] != "pass" and r["message"] else "")
            lines.append(
                f"| {r['format']} | {r['quant']} | {size} | {_f(r['jaccard'], '.4f')} | {_f(r['delta_jaccard'], '+.4f')} | "
                f"{_f(r['dice'], '.4f')} | {_f(r['delta_dice'], '+.4f')} | {iou} | {latency} | {status} |"
            )
        int8 = [r for r in model["artifacts"] if r["quant"] == "int8"]
        lines += ["", "int8 deltas against torch fp32: " + "; ".join(
            f"{r['format']} ΔJaccard {_f(r['delta_jaccard'], '+.4f')}, ΔDice {_f(r['delta_dice'], '+.4f')}, mask IoU {_f(r['mask_iou_vs_torch'], '.4f')}"
            for r in int8
        ) + "."]  # fmt: skip
        att = model["onnx_int8_attention"]
        if att:
            lines += [
                "",
                f"ONNX int8 graph (QDQ format): {len(att['float_matmul_softmax'])} attention MatMul/Softmax nodes, "
                f"{len(att['qdq_fed_matmul_softmax'])} of them with every input coming from a DequantizeLinear, i.e. quantized "
                f"(onnxruntime fuses such QDQ groups into int8 kernels where it has them); "
                f"{len(att['float_matmul_softmax']) - len(att['qdq_fed_matmul_softmax'])} left in float. "
                f"Nodes: {', '.join(att['float_matmul_softmax'])}.",
            ]
        tfl = model["tflite_int8_attention"]
        if tfl:
            in_int8 = sum(all(d == "int8" for d in o["inputs"] + o["outputs"]) for o in tfl)
            lines += [
                "",
                f"TFLite int8 graph: {in_int8} of {len(tfl)} attention ops (BATCH_MATMUL, SOFTMAX and the FULLY_CONNECTED "
                f"a bmm became) run with int8 inputs and outputs: "
                + ", ".join(f"{o['op']} {'/'.join(o['inputs'])}->{'/'.join(o['outputs'])}" for o in tfl)
                + ".",
            ]
        lines.append("")
    lines += summary(result)
    path.write_text("\n".join(lines))


def summary(result: dict) -> list[str]:
    rows = [(m["run"], r) for m in result["models"] for r in m["artifacts"]]
    int8 = [(run, r) for run, r in rows if r["quant"] == "int8" and r["delta_jaccard"] is not None]
    float_rows = [(run, r) for run, r in rows if r["quant"] in ("fp32", "fp16") and r["delta_jaccard"] is not None]
    not_passing = [f"{run} {r['format']} {r['quant']} ({r['status']})" for run, r in rows if r["status"] != "pass"]
    lines = ["## Summary", ""]
    if float_rows:
        worst = max(float_rows, key=lambda x: abs(x[1]["delta_jaccard"]))
        lines.append(
            f"- fp32/fp16: largest |ΔJaccard| {abs(worst[1]['delta_jaccard']):.4f} ({worst[0]} {worst[1]['format']} {worst[1]['quant']}); "
            f"lowest mean mask IoU with torch {min(r['mask_iou_vs_torch'] for _, r in float_rows):.4f}."
        )
    if int8:
        worst = min(int8, key=lambda x: x[1]["delta_jaccard"])
        lines.append(
            f"- int8: largest Jaccard drop {-worst[1]['delta_jaccard']:.4f} ({worst[0]} {worst[1]['format']}); "
            f"mean mask IoU with torch {min(r['mask_iou_vs_torch'] for _, r in int8):.4f}–{max(r['mask_iou_vs_torch'] for _, r in int8):.4f}, "
            f"worst single image {min(r['min_mask_iou_vs_torch'] for _, r in int8):.4f}; images whose int8 mask overlaps torch's "
            f"by less than IoU 0.5: "
            + ", ".join(f"{run} {r['format']} {r['images_mask_iou_below_half']}" for run, r in int8)
            + ". "
            + (
                " With attention quantized, int8 moves some mask boundaries on a few images but not the dataset Jaccard (< 0.01)."
                if -worst[1]["delta_jaccard"] < 0.01
                else ""
            )
        )
    for model in result["models"]:
        by = {(r["format"], r["quant"]): r for r in model["artifacts"]}
        ort = (by.get(("onnx", "fp32")) or {}).get("latency_ms_1thread")
        for fmt in ("onnx", "tflite"):
            q = (by.get((fmt, "int8")) or {}).get("latency_ms_1thread")
            if q and ort:
                lines.append(
                    f"- {model['run']} {fmt} int8 at {model['img_size']} px, 1 thread: {q:.2f} ms against ONNX Runtime fp32 "
                    f"{ort:.2f} ms in the same run ({q / ort:.2f}x)."
                )
    lines.append("- Artifacts not passing: " + (", ".join(not_passing) if not_passing else "none") + ".")
    lines.append("")
    return lines


def main() -> int:
    configure()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collect", action="store_true", help="skip export and verify; rebuild the results from runs/segparity")
    parser.add_argument("--note", help="a sentence about the conditions of the run, kept with the results")
    parser.add_argument("--resume", action="store_true", help="keep a model whose verify.json already exists")
    args = parser.parse_args()
    if not args.collect:
        OUT.mkdir(parents=True, exist_ok=True)
        for name in MODELS:
            if args.resume and (OUT / folder(name) / "verify.json").exists():
                logger.info(f"{name}: kept from {OUT / folder(name)}")
                continue
            log = OUT / f"{folder(name)}.log"
            run_logged(export_command(name), log)  # a failed format is a failed row, verify still runs the rest
            run_logged(verify_command(name), log)
    result = collect()
    if args.note:
        result["note"] = args.note
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{RESULT_NAME}.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, RESULTS / f"{RESULT_NAME}.md")
    logger.info(f"wrote {RESULTS / RESULT_NAME}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
