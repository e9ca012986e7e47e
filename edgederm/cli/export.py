"""``edgederm export``: a run to TFLite / ONNX / CoreML / ExecuTorch artifacts and manifest.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import UsageError
from .parser import model_path


def add_parser(sub) -> None:
    from ..core.formats import DEFAULT_WEIGHT_ROUNDING, FORMATS, QUANT_MODES, WEIGHT_ROUNDING

    p = sub.add_parser("export", help="export a run to TFLite / ONNX / CoreML / ExecuTorch artifacts + manifest.json")
    p.add_argument("run_dir", type=model_path, help="a run directory (model.safetensors + spec.json) or zoo:NAME")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, from {', '.join(FORMATS)}")
    p.add_argument("--quant", default="fp32,fp16,int8", help=f"comma-separated, from {', '.join(QUANT_MODES)}")
    p.add_argument("--calib-data", help="representative images for int8 (default: the train split of the run's training data)")
    p.add_argument("--calib-n", type=int, default=300)
    p.add_argument(
        "--max-drop",
        type=float,
        default=0.01,
        help="int8-aa: largest share of calibration images whose top-1 may differ from fp32 (default 0.01)",
    )
    p.add_argument(
        "--max-size",
        type=float,
        default=0.3,
        help="int8-aa: largest file size as a share of fp32, which limits the layers kept float (default 0.3)",
    )
    p.add_argument(
        "--weight-rounding",
        choices=WEIGHT_ROUNDING,
        default=DEFAULT_WEIGHT_ROUNDING,
        help="int8 and w8a16: round each weight up or down for its layer's output on the calibration images instead of to "
        "its nearest int8 step. auto (default): keep it where each format's int8 model comes closer to fp32 on held-out "
        "calibration images; on: always; off: nearest (the quickest export). Never for --qat runs. Check the result with verify",
    )
    p.add_argument("--nchw", action="store_true", help="TFLite: keep NCHW input instead of the phone-friendly NHWC")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--quiet", action="store_true", help="warnings and errors only: no progress bars")
    p.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..core.formats import parse_formats, parse_quant_modes
    from ..export import export_run

    formats, quants = parse_formats(args.formats), parse_quant_modes(args.quant)
    if args.calib_n < 1:
        raise UsageError("--calib-n must be at least 1")
    if not 0 < args.max_size <= 1:
        raise UsageError(f"--max-size {args.max_size:g} is not a share of the fp32 size", fix="pass a value in (0, 1], e.g. 0.3")
    records = export_run(
        args.run_dir,
        formats,
        quants,
        args.out,
        calib_data=args.calib_data,
        calib_n=args.calib_n,
        options={"nhwc": not args.nchw, "max_drop": args.max_drop, "max_size": args.max_size, "weight_rounding": args.weight_rounding},
    )
    print(f"{'format':8} {'quant':13} {'status':8} {'size':>10} {'seconds':>8}  path / message")
    for r in records:
        size = f"{r.size / 1e6:.2f} MB" if r.size else ""
        print(f"{r.format:8} {r.quant:13} {r.status:8} {size:>10} {r.seconds or '':>8}  {r.path or r.message}")
    failed = [r for r in records if r.status == "failed"]
    return 1 if failed else 0
