"""The zoo's classifier and segmenters, every TFLite and ONNX artifact, on emulated ARM64 phone CPUs.

    python benchmarks/arm64_parity.py [--entries lite0-ham10000,tinyseg-isic2017,mobilegan-isic2017] [--images 100]

For each zoo entry this exports TFLite and ONNX at fp32, fp16, int8 and int8-dynamic (int8 calibrated
on 200 images of the entry's own train split, as ``benchmarks/zoo.py build`` does) and runs
``edgederm verify --emulate arm64``: every artifact on this x86 host on the whole set, then again
under QEMU user-mode emulation of a Cortex-A53 (budget phones) and a Cortex-A76 (mid and high-end
phones) on a fixed subset of it (``--images`` evenly spaced images; torch is scored on the same
ones). The classifier runs on its lesion-disjoint HAM10000 test split, the segmenters on the ISIC
2017 val set.

Each TFLite artifact then runs once more on each CPU with tflite-runtime 2.14 (numpy<2) instead of
ai-edge-litert, the interpreter many deployed apps still ship, against LiteRT on the same CPU.

Writes benchmarks/results/arm64_parity.{json,md}. Emulated times are not a phone's latency and are
not reported.
"""

from __future__ import annotations

import argparse
import platform
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from _markdown import conditions_and_targets
from _results import add_results_options, command_line, reread, write_results

from edgederm.core.log import configure, get_logger

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHARED = REPO.parent / "shared" / "data"
QUANTS = ("fp32", "fp16", "int8", "int8-dynamic")
# verify data for each entry: (dataset spec, split of the entry's splits.csv or None for the whole set)
DATA = {
    "lite0-ham10000": ("ham10000:{shared}/ham10000", "test"),
    "tinyseg-isic2017": ("isic2017:{shared}/isic2017/val", None),
    "mobilegan-isic2017": ("isic2017:{shared}/isic2017/val", None),
}
CALIB = {"lite0-ham10000": "ham10000:{shared}/ham10000", "tinyseg-isic2017": "isic2017:{shared}/isic2017/train"}
CALIB["mobilegan-isic2017"] = CALIB["tinyseg-isic2017"]
TARGETS = {"agreement_vs_x86": 0.995, "mask_iou_vs_x86": 0.99, "headline_vs_x86": 0.002, "bma_drop": 0.005, "mel_sensitivity_drop": 0.01}
# how far outputs are apart: a classifier's largest probability difference; a segmenter's share of mask pixels that differ
DIFF = {"classification": ("max_abs_prob_diff", "max_abs_prob_diff"), "segmentation": ("pixels_differing", "mean_abs_prob_diff")}
logger = get_logger("benchmarks.arm64_parity")


def export(name: str, work: Path, shared: Path) -> Path:
    from edgederm.core.formats import FORMATS
    from edgederm.core.zoo import resolve
    from edgederm.export import export_run

    out = work / name / "export"
    if (out / "manifest.json").is_file():
        logger.info(f"{name}: reusing {out}")
        return out
    calib = CALIB[name].format(shared=shared)
    export_run(resolve(f"zoo:{name}"), [FORMATS["tflite"], FORMATS["onnx"]], list(QUANTS), out, calib_data=calib, calib_n=200)
    return out


def verify(name: str, export_dir: Path, shared: Path, cpus: list[str], images: int) -> dict:
    from edgederm.core.zoo import resolve
    from edgederm.evaluate.verify.guards import parse_guard
    from edgederm.evaluate.verify.runner import VerifyOptions, verify_export

    data, split = DATA[name]
    classifier = split is not None
    options = VerifyOptions(
        data=data.format(shared=shared),
        split=split,
        max_drop=TARGETS["bma_drop"] if classifier else 0.005,
        guards=[parse_guard(f"mel_sensitivity={TARGETS['mel_sensitivity_drop']}")] if classifier else [],
        threads=[1],
        runs=3,
        warmup=1,
        reference=resolve(f"zoo:{name}"),
        emulate_coreml=False,
        saliency_images=0,
        emulate=cpus,
        emulate_images=images,
    )
    return verify_export(export_dir, options)


def pixels_of(result: dict, name: str, indices: list[int], shared: Path) -> np.ndarray:
    """verify's preprocessed pixels of the emulated images, loaded again the same way."""
    from edgederm.core.spec import ModelSpec
    from edgederm.data.pixels import load_pixels
    from edgederm.data.selection import resolve_inputs

    reference = Path(result["reference"]["name"])
    spec = ModelSpec.load(reference / "spec.json")
    data, split = DATA[name]
    dataset = resolve_inputs(data.format(shared=shared), [], split, reference / "splits.csv")
    cache = load_pixels(dataset, spec.preprocess, desc=None)
    return cache.pixels[indices]


def tflite_runtime_rows(name: str, result: dict, export_dir: Path, cpus: list[str], shared: Path) -> list[dict]:
    """Each TFLite artifact with tflite-runtime on each CPU, against LiteRT on the same CPU and against this host."""
    from edgederm.core.spec import ModelSpec
    from edgederm.evaluate.verify.emulation import add_tflite_runtime, run_bench, setup_arm64
    from edgederm.evaluate.verify.runner import as_device_output, device_probs
    from edgederm.evaluate.verify.scoring import agreement, score

    env = setup_arm64()
    add_tflite_runtime(env)
    spec = ModelSpec.load(Path(result["reference"]["name"]) / "spec.json")
    devices = {d["device"]["cpu"]: d for d in result["device_results"] if d.get("emulated")}
    indices = devices[cpus[0]]["image_indices"]
    pixels = pixels_of(result, name, indices, shared)
    truth = result["truth"].subset(np.array(indices))
    host = {a["name"]: a for a in result["artifacts"]}
    tflite = [a["name"] for a in devices[cpus[0]]["artifacts"] if a["name"].endswith(".tflite")]
    share = "mask_iou" if spec.task == "segmentation" else "top1"
    headline = "jaccard" if spec.task == "segmentation" else "balanced_accuracy"
    diff, measure = DIFF[spec.task]

    def on_cpu(cpu: str) -> list[dict]:
        bench = run_bench(
            env,
            cpu,
            [export_dir / n for n in tflite],
            pixels,
            [str(i) for i in indices],
            threads=[1],
            runs=1,
            warmup=0,
            runtime="tflite-runtime",
        )
        litert = {a["name"]: a for a in devices[cpu]["artifacts"]}
        rows = []
        for got in bench["artifacts"]:
            probs = device_probs(spec, got["outputs"])
            on_litert = litert[got["name"]]
            vs_litert = agreement(spec, truth, on_litert["probs"], probs)
            vs_host = agreement(spec, truth, as_device_output(spec, host[got["name"]]["probs"][indices]), probs)
            metrics = score(spec, truth, probs)
            rows.append(
                {
                    "name": got["name"],
                    "cpu": cpu,
                    f"{share}_vs_litert": vs_litert[share],
                    f"{diff}_vs_litert": vs_litert[measure],
                    f"{share}_vs_host": vs_host[share],
                    f"{diff}_vs_host": vs_host[measure],
                    f"{headline}_delta_vs_litert": metrics[headline] - on_litert["metrics"][headline],
                }
            )
            logger.info(
                f"{got['name']} on {cpu}, tflite-runtime vs LiteRT: {share} {vs_litert[share]:.1%}, {diff} {vs_litert[measure]:.2g}"
            )
        return rows

    with ThreadPoolExecutor(max_workers=len(cpus)) as pool:
        return [row for cpu_rows in pool.map(on_cpu, cpus) for row in cpu_rows]


def summarise(name: str, result: dict) -> dict:
    """What the results keep of one entry's verify run: host metrics, and per emulated CPU the numbers the targets read."""
    classifier = result["task"] == "classification"
    headline = result["headline_metric"]
    keys = ("balanced_accuracy", "accuracy", "macro_auc", "mel_sensitivity") if classifier else ("jaccard", "dice")
    emulated = [d for d in result["device_results"] if d.get("emulated")]
    diff = DIFF[result["task"]][0]
    artifacts = []
    for a in result["artifacts"]:
        if a.get("probs") is None:
            continue
        row = {
            "name": a["name"],
            "format": a["format"],
            "quant": a["quant"],
            "host": {"status": a["status"], **{k: a["metrics"].get(k) for k in keys}},
            "emulated": {},
        }
        for d in emulated:
            entry = next(e for e in d["artifacts"] if e["name"] == a["name"])
            agree = entry["agreement"]
            share = "top1" if classifier else "mask_iou"
            row["emulated"][d["device"]["cpu"]] = {
                "status": entry["status"],
                "checks": entry.get("checks", []),
                f"{share}_vs_host": agree[f"{share}_vs_host"],
                f"{diff}_vs_host": agree[f"{diff}_vs_host"],
                f"{share}_vs_torch": agree[share],
                f"{headline}_vs_host": entry["deltas_vs_host"].get(headline),
                **{f"{k}_vs_torch": entry["deltas"].get(k) for k in keys},
            }
        artifacts.append(row)
    first = emulated[0]
    return {
        "entry": f"zoo:{name}",
        "task": result["task"],
        "data": result["data"],
        "headline_metric": headline,
        "host_images": result["n_images"],
        "emulated_images": first["n_images"],
        "torch_on_emulated_images": {k: first["reference_metrics"].get(k) for k in keys},
        "runtimes": {d["device"]["cpu"]: d["device"].get("runtimes") for d in emulated},
        "artifacts": artifacts,
    }


def plain(value):
    """numpy scalars as Python numbers, for JSON."""
    import json

    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def target_checks(entries: list[dict]) -> list[dict]:
    checks = []
    for e in entries:
        classifier = e["task"] == "classification"
        share, bound = ("top1", TARGETS["agreement_vs_x86"]) if classifier else ("mask_iou", TARGETS["mask_iou_vs_x86"])
        cells = [(a, cpu, m) for a in e["artifacts"] for cpu, m in a["emulated"].items()]
        worst = min(cells, key=lambda c: c[2][f"{share}_vs_host"])
        checks.append(
            {
                "target": f"{e['entry']}: every artifact's {'top-1 agreement' if classifier else 'mask IoU'} with x86 >= {bound:.3g}",
                "value": f"lowest {worst[2][f'{share}_vs_host']:.4f} ({worst[0]['name']} on {worst[1]})",
                "met": worst[2][f"{share}_vs_host"] >= bound,
            }
        )
        key = f"{e['headline_metric']}_vs_host"
        far = max(cells, key=lambda c: abs(c[2][key] or 0.0))
        checks.append(
            {
                "target": f"{e['entry']}: {e['headline_metric']} within {TARGETS['headline_vs_x86'] * 100:.1f} pt of x86",
                "value": f"largest {(far[2][key] or 0.0) * 100:+.2f} pt ({far[0]['name']} on {far[1]})",
                "met": all(abs(c[2][key] or 0.0) <= TARGETS["headline_vs_x86"] + 1e-12 for c in cells),
            }
        )
        if classifier:
            int8 = [c for c in cells if c[0]["quant"].startswith("int8")]
            broken = [f"{a['name']} on {cpu}" for a, cpu, m in int8 if m["status"] != "pass"]
            checks.append(
                {
                    "target": f"{e['entry']}: int8 gates on ARM64 (balanced accuracy -0.5 pt, melanoma sensitivity -1 pt against torch, "
                    "on the emulated images)",
                    "value": "all pass" if not broken else "fail: " + ", ".join(broken),
                    "met": not broken,
                }
            )
    return checks


def _pt(value: float | None) -> str:
    return "" if value is None else f"{value * 100:+.2f}"


def markdown(payload: dict) -> str:
    lines = [
        "# The zoo on ARM64 phone CPUs (QEMU user-mode emulation): agreement with x86 on the same pixels",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"Date: {payload['date']}. Host: `{payload['machine']['platform']}`, {payload['machine']['cpus']} CPUs; the emulated "
        f"environment: Debian {payload['environment']['suite']} arm64, {payload['environment']['python']}, wheels "
        + ", ".join(f"{k} {v}" for k, v in sorted(payload["environment"]["wheels"].items()))
        + f". tflite-runtime lane: {', '.join(f'{k} {v}' for k, v in sorted(payload['tflite_runtime_wheels'].items()))}.",
        "",
        "Every artifact ran on the x86 host on the whole set, then on each emulated CPU on a fixed subset: evenly spaced "
        "images of the same preprocessed pixels; torch fp32 was scored on the same subset for the deltas. cortex-a53 has no "
        "dot-product and no fp16 arithmetic (budget phones, Raspberry Pi 3); cortex-a76 has both (mid and high-end phones), so "
        "XNNPACK and ONNX Runtime choose other kernels on each. Emulated times are not a phone's latency and are not shown.",
        *conditions_and_targets(payload["note"], payload["target_checks"]),
    ]
    for e in payload["entries"]:
        classifier = e["task"] == "classification"
        share = "top1" if classifier else "mask_iou"
        head = e["headline_metric"]
        cpus = list(e["artifacts"][0]["emulated"])
        torch_sub = e["torch_on_emulated_images"][head]
        lines += [
            "",
            f"## {e['entry']} on `{e['data'].replace(str(SHARED), '../shared/data')}`",
            "",
            f"x86: {e['host_images']} images; emulated: {e['emulated_images']} of them (torch fp32 {head} on those: {torch_sub:.3f}). "
            f"Each CPU cell: status; {'top-1 agreement' if classifier else 'mask IoU'} with the same artifact on x86; "
            f"{'largest probability difference' if classifier else 'share of mask pixels that differ'} from x86; {head} change "
            "against x86 and against torch (pt).",
            "",
            f"| artifact | x86 status | x86 {head} | " + " | ".join(cpus) + " |",
            "|---|---|---:|" + "---|" * len(cpus),
        ]
        for a in e["artifacts"]:
            cells = []
            for cpu in cpus:
                m = a["emulated"][cpu]
                apart = f"{m['max_abs_prob_diff_vs_host']:.1e}" if classifier else f"{m['pixels_differing_vs_host']:.3%}"
                cells.append(
                    f"{m['status']}; {m[f'{share}_vs_host']:.1%}; {apart}; {_pt(m[f'{head}_vs_host'])} / {_pt(m[f'{head}_vs_torch'])}"
                )
            lines.append(f"| {a['format']} {a['quant']} | {a['host']['status']} | {a['host'][head]:.3f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## tflite-runtime 2.14 against ai-edge-litert on ARM64",
        "",
        "The same TFLite files and pixels with the older interpreter (numpy<2), against LiteRT on the same emulated CPU.",
        "",
        "Agreement is top-1 for the classifier and mask IoU for the segmenters; apart is the largest probability difference "
        "(classifier) or the share of mask pixels that differ (segmenters).",
        "",
        "| entry | artifact | CPU | agreement with LiteRT | apart from LiteRT | agreement with x86 | headline Δ vs LiteRT (pt) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for e in payload["entries"]:
        classifier = e["task"] == "classification"
        share, diff = ("top1", "max_abs_prob_diff") if classifier else ("mask_iou", "pixels_differing")
        for r in e["tflite_runtime"]:
            delta = next(v for k, v in r.items() if k.endswith("_delta_vs_litert"))
            apart = f"{r[f'{diff}_vs_litert']:.1e}" if classifier else f"{r[f'{diff}_vs_litert']:.3%}"
            lines.append(
                f"| {e['entry']} | {r['name']} | {r['cpu']} | {r[f'{share}_vs_litert']:.1%} | {apart} | {r[f'{share}_vs_host']:.1%} | {_pt(delta)} |"
            )
    if payload.get("findings"):
        lines += ["", "## What the differences come from", "", *payload["findings"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    configure()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", default=",".join(DATA))
    parser.add_argument("--images", type=int, default=100, help="emulated images per entry (evenly spaced over its verify set)")
    parser.add_argument("--cpus", default="cortex-a53,cortex-a76")
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "arm64_parity")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--resume", action="store_true", help="keep the entries an earlier run already measured (WORK/NAME/summary.json)")
    parser.add_argument("--findings", type=Path, help="a Markdown file of what explains the differences, kept with the results")
    add_results_options(parser, "arm64_parity")
    args = parser.parse_args(argv)
    out = args.results / "arm64_parity.json"
    if args.markdown_only:
        payload = reread(out, args.note)
        if args.findings:
            payload["findings"] = args.findings.read_text().strip().splitlines()
        payload["target_checks"] = target_checks(payload["entries"])
        write_results(out, payload, markdown(payload))
        return 0

    import json
    import os
    from datetime import date

    from edgederm.evaluate.verify.emulation import add_tflite_runtime, setup_arm64

    env = setup_arm64()
    tflite_runtime_wheels = add_tflite_runtime(env)
    cpus = [c.strip() for c in args.cpus.split(",") if c.strip()]
    entries = []
    for name in [n.strip() for n in args.entries.split(",") if n.strip()]:
        done = args.work / name / "summary.json"
        if args.resume and done.is_file():  # an entry measured by an earlier, interrupted run of the same command
            logger.info(f"{name}: reusing {done}")
            entries.append(json.loads(done.read_text()))
            continue
        export_dir = export(name, args.work, args.shared)
        result = verify(name, export_dir, args.shared, cpus, args.images)
        summary = plain(summarise(name, result))
        done.with_name("verify_summary.json").write_text(json.dumps(summary, indent=2))  # kept if the lane below fails
        summary["tflite_runtime"] = plain(tflite_runtime_rows(name, result, export_dir, cpus, args.shared))
        entries.append(summary)
        done.write_text(json.dumps(summary, indent=2))
    payload = {
        "command": command_line("arm64_parity", argv, omit=("--findings",)),
        "date": date.today().isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "environment": json.loads((env.root / "ready.json").read_text()),
        "tflite_runtime_wheels": tflite_runtime_wheels,
        "targets": TARGETS,
        "entries": entries,
        "note": args.note,
        "findings": args.findings.read_text().strip().splitlines() if args.findings else [],
    }
    payload["target_checks"] = target_checks(entries)
    write_results(out, payload, markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
