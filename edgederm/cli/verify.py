"""``edgederm verify``: every exported artifact against the PyTorch reference."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.errors import UsageError
from .parser import model_path


def add_parser(sub) -> None:
    p = sub.add_parser("verify", help="run every exported artifact against the torch fp32 model: metrics, agreement, latency, status")
    p.add_argument("export_dir", type=Path, help="an export directory with manifest.json")
    p.add_argument("--data", required=True, help="labelled images to verify on (a dataset spec)")
    p.add_argument("--split", choices=["train", "val", "test"], help="only this split of the source run's splits.csv")
    p.add_argument(
        "--reference", type=model_path, help="the run directory (or zoo:NAME) the export came from (default: the manifest's source)"
    )
    p.add_argument("--max-drop", type=float, default=0.01, help="largest allowed drop of the headline metric (balanced accuracy)")
    p.add_argument("--guard", action="append", default=[], metavar="METRIC=MAX_DROP", help="e.g. mel_sensitivity=0.02 (repeatable)")
    p.add_argument("--threads", default="1", help="comma-separated thread counts for latency, e.g. 1,2")
    p.add_argument("--runs", type=int, default=50, help="timed runs per artifact and thread count (after warm-up)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--saliency", type=int, default=64, help="Grad-CAM of the reference on this many images with lesion masks (0: off)")
    p.add_argument("--no-emulate-coreml", action="store_true", help="leave CoreML unverified off Apple platforms instead of emulating it")
    p.add_argument("--device-results", type=Path, nargs="+", default=[], help="files from edgederm-bench or the demo app on a device")
    p.add_argument(
        "--emulate",
        metavar="arm64[:CPU,...]",
        help="also run every TFLite/ONNX artifact on emulated ARM64 CPUs (QEMU; default cortex-a53,cortex-a76); a failure there fails the run",
    )
    p.add_argument(
        "--emulate-images",
        type=int,
        metavar="N",
        help="with --emulate: run the emulated CPUs on N evenly spaced images (QEMU takes about a second per image for a 224 px "
        "fp32 classifier); the deltas compare torch on the same N",
    )
    p.add_argument("--json", type=Path, help="write the results here (default EXPORT_DIR/verify.json)")
    p.add_argument("--report", type=Path, help="write verify.md + verify.html + plots here (default EXPORT_DIR/verify)")
    p.add_argument("--quiet", action="store_true", help="warnings and errors only: no progress bars")
    p.set_defaults(handler=cmd_verify)


def cmd_verify(args: argparse.Namespace) -> int:
    from ..core.spec import ModelSpec
    from ..evaluate.verify.device_results import read_device_results
    from ..evaluate.verify.emulation import parse_emulate
    from ..evaluate.verify.guards import parse_guard
    from ..evaluate.verify.report import write_json, write_report
    from ..evaluate.verify.runner import VerifyOptions, exit_code, verify_export
    from ..runtime.timing import parse_threads_list

    if args.runs < 1 or args.warmup < 0:
        raise UsageError("--runs must be >= 1 and --warmup >= 0")
    if args.emulate_images is not None and (args.emulate_images < 1 or not args.emulate):
        raise UsageError(
            "--emulate-images takes a positive number and goes with --emulate", fix="e.g. --emulate arm64 --emulate-images 100"
        )
    options = VerifyOptions(
        data=args.data,
        split=args.split,
        max_drop=args.max_drop,
        guards=[parse_guard(g) for g in args.guard],
        threads=parse_threads_list(args.threads),
        runs=args.runs,
        warmup=args.warmup,
        reference=args.reference,
        emulate_coreml=not args.no_emulate_coreml,
        saliency_images=args.saliency,
        emulate=parse_emulate(args.emulate) if args.emulate else [],
        emulate_images=args.emulate_images,
    )
    devices = [read_device_results(p) for p in args.device_results]  # a bad file fails before the long run
    if options.emulate:
        from ..evaluate.verify.emulation import setup_arm64

        setup_arm64()  # a missing QEMU fails before the long run too; built once, then reused
    result = verify_export(args.export_dir, options)
    result["device_results"] = [*result["device_results"], *devices]
    json_path = args.json or args.export_dir / "verify.json"
    write_json(result, json_path)
    spec = ModelSpec.load(Path(result["reference"]["name"]) / "spec.json")
    markdown, html = write_report(result, spec, args.report or args.export_dir / "verify")
    for a in result["artifacts"]:
        agree = a.get("agreement") or {}
        share = f"{'top-1' if 'top1' in agree else 'mask IoU'} {agree.get('top1', agree.get('mask_iou')):.1%}" if agree else ""
        headline = (a.get("metrics") or {}).get(result["headline_metric"])
        score = "" if headline is None else f"{result['headline_metric']} {headline:.3f}"
        print(
            f"{a['status']:10} {a['format'] or '':10} {a['quant'] or '':13} {share:16} {score:26} {'; '.join(a['checks']) or a['message']}"
        )

    print(f"wrote {json_path}, {markdown}, {html}", file=sys.stderr)
    return exit_code(result)
