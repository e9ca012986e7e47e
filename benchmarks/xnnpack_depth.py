"""Where ExecuTorch int8 loses time against TFLite int8, both on XNNPACK: EfficientNet-Lite0 cut after each stage.

    python benchmarks/xnnpack_depth.py [--run zoo:lite0-ham10000] [--stages 0,1,2,3,4,5,6,7] [--runs 40]

Each prefix of the network (the stem and the first K of its 7 stages, then a global average pool
and a linear layer to the run's classes) is exported by edgederm's own TFLite and ExecuTorch
converters at fp32 and int8, calibrated on the same 24 images, and timed at batch 1 and 1 thread
through ``Predictor.load`` (preprocessed pixels in, probabilities out: each runtime's input layout
conversion included). A stage's cost is the difference between consecutive prefixes, so a gap that
grows with depth is in the kernels, and one that stays constant is per-call overhead.

Writes benchmarks/results/xnnpack_depth.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import add_results_options, command_line, reread, write_results

from edgederm.core.log import configure, get_logger

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "xnnpack_depth.json"
ROWS = (("tflite", "fp32"), ("executorch", "fp32"), ("tflite", "int8"), ("executorch", "int8"))
logger = get_logger("benchmarks.xnnpack_depth")


def prefix(model, stages: int, num_classes: int):
    """Lite0's stem and first ``stages`` stages, then pool and a linear head."""
    from torch import nn

    class Prefix(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(model.conv_stem, model.bn1)
            self.blocks = model.blocks[:stages]
            last = model.blocks[stages - 1][-1] if stages else None  # a stage's output is its last block's final BN
            channels = model.bn1.num_features if last is None else (last.bn3 if hasattr(last, "bn3") else last.bn2).num_features
            self.head = nn.Linear(channels, num_classes)

        def forward(self, x):
            return self.head(self.blocks(self.stem(x)).mean((2, 3)))

    return Prefix().eval()


def timed(path: Path, pixels: np.ndarray, runs: int) -> float:
    from edgederm.runtime import Predictor
    from edgederm.runtime.timing import measure_latency

    predictor = Predictor.load(path, threads=1)
    return measure_latency(lambda: predictor.predict_pixels(pixels), runs=runs, warmup=5)["median_ms"]


def measure(run: str, stages: list[int], runs: int) -> dict:
    from edgederm.converters import executorch, tflite
    from edgederm.converters._calibration import Calibration
    from edgederm.converters._job import ExportJob

    from edgederm.core.zoo import is_reference, resolve
    from edgederm.models.checkpoint import load_checkpoint

    model, spec = load_checkpoint(resolve(run) if is_reference(run) else Path(run))
    side = spec.preprocess.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (24, side, side, 3), dtype=np.uint8)
    calibration = Calibration(pixels, spec.preprocess, "24 uniform random images")
    converters = {"tflite": (tflite, "tflite"), "executorch": (executorch, "pte")}
    rows = []
    with tempfile.TemporaryDirectory(prefix="xnnpack-depth-") as work:
        for k in stages:
            network = prefix(copy.deepcopy(model), k, spec.num_classes)
            row = {"stages": k}
            for fmt, quant in ROWS:
                converter, suffix = converters[fmt]
                target = Path(work) / f"s{k}_{quant}.{suffix}"
                converter.export(ExportJob(model=network, spec=spec, quant=quant, target=target, calibration=calibration))
                row[f"{fmt} {quant}"] = timed(target, pixels[:1], runs)
            logger.info(f"stages 0..{k}: " + ", ".join(f"{key} {value:.2f} ms" for key, value in row.items() if key != "stages"))
            rows.append(row)
    return {"run": run, "input_size": side, "rows": rows}


def markdown(payload: dict) -> str:
    rows = payload["rows"]
    keys = [f"{fmt} {quant}" for fmt, quant in ROWS]
    lines = [
        "# ExecuTorch against TFLite on XNNPACK, stage by stage",
        "",
        f"Command: `{payload['command']}`",
        "",
        f"Run on {payload['created']} on `{payload['platform']}` ({payload['cpus']} CPUs), batch 1, 1 thread, median of "
        f"{payload['runs']} calls per file, one process. Model: `{payload['run']}` at {payload['input_size']} px, cut after "
        "each stage (stage 0 is the stem alone) with a pooled linear head; every file made by edgederm's converters.",
        *(["", f"Conditions: {payload['note']}"] if payload.get("note") else []),
        "",
        "| stages | " + " | ".join(f"{k} ms" for k in keys) + " | ET/TFLite int8 | ET/TFLite fp32 | stage cost int8 TFLite / ET ms |",
        "|---:|" + "---:|" * (len(keys) + 3),
    ]
    previous = None
    for row in rows:
        step = ""
        if previous is not None:
            step = f"{row['tflite int8'] - previous['tflite int8']:.2f} / {row['executorch int8'] - previous['executorch int8']:.2f}"
        lines.append(
            f"| {row['stages']} | "
            + " | ".join(f"{row[k]:.2f}" for k in keys)
            + f" | {row['executorch int8'] / row['tflite int8']:.2f}x | {row['executorch fp32'] / row['tflite fp32']:.2f}x | {step} |"
        )
        previous = row
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    configure()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="zoo:lite0-ham10000", help="an EfficientNet-Lite run directory or zoo entry")
    parser.add_argument("--stages", default="0,1,2,3,4,5,6,7", help="cut after these stages (0: the stem alone)")
    parser.add_argument("--runs", type=int, default=40)
    add_results_options(parser, RESULTS.stem)
    args = parser.parse_args(argv)
    if args.markdown_only:
        payload = reread(RESULTS, args.note)
    else:
        import os

        payload = {
            "command": command_line("xnnpack_depth", argv),
            "created": time.strftime("%Y-%m-%d"),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "runs": args.runs,
            "note": args.note,
            **measure(args.run, [int(s) for s in args.stages.split(",")], args.runs),
        }
    write_results(RESULTS, payload, markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
