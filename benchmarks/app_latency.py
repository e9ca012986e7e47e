"""Capture -> rendered result in the demo app, int8 segmenter + int8 classifier, 1 thread (target: <= 100 ms).

    nice -n 19 .venv/bin/python benchmarks/app_latency.py

Exports (or reuses) int8 TFLite and ONNX artifacts of each segmenter run and of the classifier run
into runs/app_latency/<run name> with ``edgederm export``, then drives the app itself: the time of
one capture is ``EdgedermScreeningApp.analyse`` (what the Capture button calls: the segmenter and
the classifier, the lesion outline, ``ResultScreen.show``, the history entry handed to its
background writer) plus the first frame drawn after it (Kivy; offscreen SDL when there is no
display), up to ``glFinish``: a software rasterizer (Mesa llvmpipe) otherwise defers the pixels to
a later GL call, i.e. into the next capture's time. After each capture, untimed, the driver waits
for the history write to reach the disk, as a person's pause before the next photo would.
``--no-render`` times only the non-UI part (``CapturePipeline.run``, ``result_view``, ``draw_contour``).

Frames are real dermoscopy photos (ISIC 2017 val), read in place, two ways:
``camera``: the photo fitted to the camera's frame size (demo_app.sources.CAMERA_RESOLUTION), already
decoded as a camera frame is; ``import``: the file as the gallery import reads it, decoding included.
Writes benchmarks/results/app_latency.{json,md}; a missing runs/app_latency/NAME is re-exported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import ImageOps

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo_app.capture import CapturePipeline  # noqa: E402
from demo_app.contours import draw_contour  # noqa: E402
from demo_app.main import launch_options, parse_args, prepare_kivy_environment  # noqa: E402
from demo_app.presentation import result_view  # noqa: E402
from demo_app.sources import CAMERA_RESOLUTION  # noqa: E402
from edgederm.core.errors import EdgedermError  # noqa: E402
from edgederm.core.log import configure, get_logger  # noqa: E402
from edgederm.core.manifest import read_manifest  # noqa: E402
from edgederm.data.images import image_size, is_image_file, load_image  # noqa: E402

SEGMENTER_CALIB = "isic2017:/work/shared/data/isic2017/train"
CLASSIFIER_CALIB = "ham10000:/work/shared/data/ham10000"
logger = get_logger("benchmarks.app_latency")


def int8_artifacts(run: str, calib: str, formats: list[str]) -> tuple[dict[str, Path], str, bool]:
    """({format: int8 artifact}, the export command, whether an earlier export was reused)."""
    out = ROOT / "runs" / "app_latency" / Path(run).name
    command = ["edgederm", "export", run, "--formats", ",".join(formats), "--quant", "int8", "--out", str(out.relative_to(ROOT))]
    command += ["--calib-data", calib]

    def found() -> dict[str, Path]:
        try:
            entries = read_manifest(out)["artifacts"]
        except EdgedermError:
            return {}
        return {a["format"]: out / a["path"] for a in entries if a["quant"] == "int8" and a["status"] == "ok"}

    reused = set(formats) <= set(found())
    if not reused:  # a separate process: torch stays out of the one that times the app
        subprocess.run([sys.executable, "-m", "edgederm", *command[1:]], cwd=ROOT, check=True)
    artifacts = found()
    return {f: artifacts[f] for f in formats}, " ".join(command), reused


class AppDriver:
    """The real app, built without its event loop: a capture runs what the Capture button runs, then draws one frame."""

    def __init__(self, classifier: Path, segmenter: Path, source: Path, data_dir: Path):
        # The --capture-and-exit set-up: no console log, offscreen SDL when there is no display.
        argv = ["--model", str(classifier), "--segmenter", str(segmenter), "--threads", "1", "--source", str(source)]
        options = launch_options(parse_args([*argv, "--data-dir", str(data_dir), "--capture-and-exit"]))
        prepare_kivy_environment(options)
        from kivy.config import Config

        Config.set("graphics", "maxfps", "0")  # draw the frame now: no sleeping to hold 60 fps
        from kivy.base import EventLoop
        from kivy.core.window import Window
        from kivy.graphics.opengl import glFinish

        from demo_app.ui.app import EdgedermScreeningApp

        self.app, self.event_loop, self.gl_finish = EdgedermScreeningApp(options), EventLoop, glFinish
        self.app.preflight()
        EventLoop.ensure_window()
        self.app.root = self.app.build()
        Window.add_widget(self.app.root)

    def use(self, pipeline: CapturePipeline) -> None:
        self.app.pipeline = pipeline

    def reset(self) -> None:
        self.app.history.clear()  # untimed: keeps the store as small as a person's

    def capture(self, frame) -> tuple[float, float | None]:
        view, _shown = self.app.analyse(frame, "benchmark")
        return self._drawn(view)

    def import_file(self, path: Path) -> tuple[float, float | None]:
        view, _shown = self.app.analyse_file(path)
        return self._drawn(view)

    def settle(self) -> None:
        """Untimed, between captures: the history entry of the last one is on disk."""
        self.app.history.flush()

    def _drawn(self, view) -> tuple[float, float | None]:
        self.event_loop.idle()  # layout, label textures and one drawn frame
        self.gl_finish()  # the frame's pixels, not only its queued GL commands
        return view.classifier_ms, view.segmenter_ms


class NoRender:
    """The non-UI part of a capture: the pipeline, what the screen would show, the outline."""

    def use(self, pipeline: CapturePipeline) -> None:
        self.pipeline = pipeline

    def reset(self) -> None:
        pass

    def settle(self) -> None:
        pass

    def capture(self, frame) -> tuple[float, float | None]:
        result = self.pipeline.run(frame)
        result_view(result)
        draw_contour(frame, result.mask)
        return result.classifier_ms, result.segmenter_ms

    def import_file(self, path: Path) -> tuple[float, float | None]:
        return self.capture(load_image(path))


def time_captures(driver, combinations: list[tuple], paths: list[Path], warmup: int) -> list[dict]:
    """Every combination on every photo, interleaved photo by photo so a load change on the machine hits them all alike.

    ``combinations``: (pipeline, frame source). Returns per combination the median / p90 of whole
    captures and the median of each part.
    """
    frames = {"camera": [ImageOps.fit(load_image(p), CAMERA_RESOLUTION) for p in paths], "import": paths}
    run = {"camera": driver.capture, "import": driver.import_file}
    for pipeline, source in combinations:
        driver.use(pipeline)
        for _ in range(warmup):
            run[source](frames[source][0])
            driver.settle()
    times: list[list[tuple[float, float, float]]] = [[] for _ in combinations]
    for index in range(len(paths)):
        for timed, (pipeline, source) in zip(times, combinations, strict=True):
            driver.use(pipeline)
            start = time.perf_counter()
            classifier_ms, segmenter_ms = run[source](frames[source][index])
            timed.append(((time.perf_counter() - start) * 1e3, classifier_ms, segmenter_ms))
            driver.settle()
        driver.reset()
    stats = []
    for timed in times:
        total, classifier, segmenter = np.array(timed, dtype=np.float64).T
        stats.append(
            {
                "n": len(timed),
                "median_ms": float(np.median(total)),
                "p90_ms": float(np.percentile(total, 90)),
                "min_ms": float(total.min()),
                "segmenter_median_ms": float(np.median(segmenter)),
                "classifier_median_ms": float(np.median(classifier)),
                "rest_median_ms": float(np.median(total - classifier - segmenter)),
            }
        )
    return stats


def machine() -> dict:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), ""
    )
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "nice": os.nice(0),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def main() -> int:
    configure()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segmenters", default="runs/seg256_tinyseg_plain,runs/seg256_mobilegan_plain")
    parser.add_argument("--classifier", default="runs/reference")
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared" / "data" / "isic2017" / "val" / "images")
    parser.add_argument("--n", type=int, default=150, help="photos per combination (default: all 150 ISIC 2017 val photos)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--formats", default="tflite,onnx")
    parser.add_argument("--sources", default="camera,import")
    parser.add_argument("--target-ms", type=float, default=100.0)
    parser.add_argument("--no-render", action="store_true", help="time the non-UI part only (no Kivy window)")
    parser.add_argument("--note", default="", help="how the machine was shared during the run")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    formats, sources = args.formats.split(","), args.sources.split(",")
    paths = sorted(p for p in args.images.iterdir() if is_image_file(p))[: args.n]
    command = (f"nice -n {os.nice(0)} " if os.nice(0) else "") + ".venv/bin/python " + shlex.join(sys.argv)

    classifier, classifier_export, classifier_reused = int8_artifacts(args.classifier, CLASSIFIER_CALIB, formats)
    exports = [{"run": args.classifier, "command": classifier_export, "reused": classifier_reused}]
    segmenters = {}
    for run in args.segmenters.split(","):
        segmenters[run], export, reused = int8_artifacts(run, SEGMENTER_CALIB, formats)
        exports.append({"run": run, "command": export, "reused": reused})

    load_before = machine()["load_average"]
    combinations = [(fmt, run, source) for fmt in formats for run in segmenters for source in sources]
    with tempfile.TemporaryDirectory(prefix="app_latency_") as data_dir:  # the history the captures write
        first = next(iter(segmenters.values()))[formats[0]]
        driver = NoRender() if args.no_render else AppDriver(classifier[formats[0]], first, paths[0], Path(data_dir))
        pipelines = {(fmt, run): CapturePipeline.load(classifier[fmt], segmenters[run][fmt], threads=1) for fmt, run, _ in combinations}
        stats = time_captures(driver, [(pipelines[fmt, run], source) for fmt, run, source in combinations], paths, args.warmup)
    rows = []
    for (fmt, run, source), timed in zip(combinations, stats, strict=True):
        rows.append(
            {
                "segmenter": Path(run).name,
                "classifier": Path(args.classifier).name,
                "format": fmt,
                "source": source,
                "segmenter_artifact": str(segmenters[run][fmt].relative_to(ROOT)),
                "classifier_artifact": str(classifier[fmt].relative_to(ROOT)),
                **timed,
                "meets_target": timed["median_ms"] <= args.target_ms,
            }
        )
        logger.info(f"{fmt} {Path(run).name} {source}: median {timed['median_ms']:.1f} ms, p90 {timed['p90_ms']:.1f} ms")
    result = {
        "command": command,
        "exports": exports,
        "images": str(args.images),
        "image_sizes": sorted({"x".join(map(str, image_size(p))) for p in paths}),
        "threads": 1,
        "warmup": args.warmup,
        "rendered": not args.no_render,
        "target_ms": args.target_ms,
        "machine": {**machine(), "load_average_before": load_before},
        "note": args.note,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "app_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "app_latency.md").write_text(markdown(result))
    return 0


def markdown(result: dict) -> str:
    target = result["target_ms"]
    camera = [r for r in result["rows"] if r["source"] == "camera"] or result["rows"]
    met = [f"{r['segmenter']} + {r['classifier']} {r['format']}" for r in camera if r["median_ms"] <= target]
    met_p90 = sum(r["p90_ms"] <= target for r in camera)
    verdict = "Met" if len(met) == len(camera) else "Partly met" if met else "Not met"
    m = result["machine"]
    lines = [
        "# Demo app: capture -> rendered result latency",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Target: capture -> rendered result <= {target:g} ms with an int8 segmenter + int8 classifier on this CPU, 1 thread. "
        f"**{verdict}**: the median is within the target for {len(met)} of {len(camera)} camera-frame combinations"
        f"{' (' + ', '.join(met) + ')' if met and len(met) < len(camera) else ''}, the p90 for {met_p90} of them.",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}, Python {m['python']}, nice {m['nice']}, "
        f"load average {m['load_average_before'][0]:.2f} before / {m['load_average'][0]:.2f} after."
        + (f" {result['note']}." if result["note"] else ""),
        "",
        "What is timed, per photo: "
        + (
            "`EdgedermScreeningApp.analyse` (what the Capture button calls: segmenter, classifier, lesion outline, "
            "`ResultScreen.show`, the history entry handed to its background writer) plus the first frame Kivy draws after it "
            "(offscreen SDL, Mesa), up to `glFinish`; untimed after each capture, the driver waits for the history entry to reach "
            "the disk, as a person's pause before the next photo would. "
            if result["rendered"]
            else "`CapturePipeline.run`, `result_view` and `draw_contour` (no UI). "
        )
        + f"{result['warmup']} untimed warm-up captures per row, then the rows interleaved photo by photo. "
        f"Photos: {result['images']} (real dermoscopy; {', '.join(result['image_sizes'])} pixels), "
        f"read in place. `camera`: each photo fitted to the camera frame ({CAMERA_RESOLUTION[0]}x{CAMERA_RESOLUTION[1]}), decoded "
        "beforehand as a camera frame is; `import`: the file as the gallery import reads it, JPEG decoding included. "
        "`segmenter ms` and `classifier ms` are the app's own timings of each model call, preprocessing "
        "(and the mask's post-processing) included; "
        "`rest` is the remainder: lesion outline, result screen and drawing, and whatever the history writer's thread takes "
        "from them (and decoding, for `import`).",
        "",
        "| segmenter (int8) | classifier (int8) | format | frames | n | median ms | p90 ms | segmenter ms | classifier ms | rest ms "
        f"| median <= {target:g} ms |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['segmenter']} | {r['classifier']} | {r['format']} | {r['source']} | {r['n']} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} "
            f"| {r['segmenter_median_ms']:.1f} | {r['classifier_median_ms']:.1f} | {r['rest_median_ms']:.1f} "
            f"| {'yes' if r['meets_target'] else 'no'} |"
        )
    lines += ["", "Artifacts (int8, exported by `edgederm export`; reused when runs/app_latency/NAME already held them):", ""]
    lines += [f"- `{e['command']}`{' (reused)' if e['reused'] else ''}" for e in result["exports"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
