"""``python -m demo_app``: the desktop entry point and the headless hooks for tests and benchmarks.

Everything that can fail on the user's input (a model file, an image, a flag) is checked before a
window opens, so a headless run fails with one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from edgederm.core import zoo
from edgederm.core.errors import EdgedermError, UsageError
from edgederm.runtime.timing import DEFAULT_RUNS, DEFAULT_WARMUP

from .benchmark import parse_threads_list, run_benchmark, write_benchmark
from .native_output import native_stderr_silenced
from .settings_store import DEFAULT_MODEL, DEFAULT_SEGMENTER, selected_artifacts

DEFAULT_WINDOW = (480, 800)  # a phone held upright


@dataclass(frozen=True)
class LaunchOptions:
    model: Path | None
    segmenter: Path | None
    threads: int | None
    source: str  # "camera", an image file or a folder of images
    data_dir: Path | None
    models_dir: Path | None
    capture_and_exit: bool
    screenshot: Path | None
    benchmark_out: Path | None
    inputs: Path | None  # with benchmark_out: an .npz or a folder of images, as edgederm-bench --inputs takes
    runs: int
    warmup: int
    threads_list: list[int]
    window: tuple[int, int]

    @property
    def headless(self) -> bool:
        return self.capture_and_exit or self.benchmark_out is not None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m demo_app",
        description="edgederm demo app: an offline skin-lesion screening aid (not a diagnosis).",
    )
    parser.add_argument(
        "--model",
        help=f"classifier artifact (.tflite, .onnx; .mlpackage on Apple platforms) or zoo:NAME (default, with its segmenter: {DEFAULT_MODEL})",
    )
    parser.add_argument(
        "--segmenter",
        help=f"optional segmentation artifact or zoo:NAME: draws the lesion outline (default with the default model: {DEFAULT_SEGMENTER})",
    )
    parser.add_argument("--threads", type=int, help="inference threads (default: the runtime's choice)")
    parser.add_argument("--source", default="camera", help="camera (default), an image file, or a folder of images replayed as frames")
    parser.add_argument("--data-dir", type=Path, help="where history and settings live (default: the app's user data folder)")
    parser.add_argument("--models-dir", type=Path, help="a folder of artifacts offered in settings and run by the benchmark")
    parser.add_argument("--size", default=f"{DEFAULT_WINDOW[0]}x{DEFAULT_WINDOW[1]}", help="window size WxH (default %(default)s)")
    headless = parser.add_argument_group("headless hooks (tests, benchmarks)")
    headless.add_argument(
        "--capture-and-exit", action="store_true", help="capture once from --source, show the result, print one JSON line, exit"
    )
    headless.add_argument("--screenshot", type=Path, help="with a headless hook: save the rendered screen to this PNG")
    headless.add_argument("--benchmark-and-exit", type=Path, metavar="OUT.json", help="benchmark the artifacts, write the JSON file, exit")
    headless.add_argument(
        "--inputs",
        type=Path,
        metavar="NPZ|IMAGE_DIR",
        help="with --benchmark-and-exit: also record each artifact's outputs on these inputs, as edgederm-bench --inputs does",
    )
    headless.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="timed runs per thread count (default %(default)s)")
    headless.add_argument("--warmup", type=int, default=DEFAULT_WARMUP, help="untimed warm-up runs (default %(default)s)")
    headless.add_argument("--threads-list", default="1", help="thread counts to benchmark, e.g. 1,2,4 (default %(default)s)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser.parse_args(argv)


def launch_options(args: argparse.Namespace) -> LaunchOptions:
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be >= 1, got {args.threads}")
    if args.runs < 1 or args.warmup < 0:
        raise UsageError("--runs must be >= 1 and --warmup >= 0")
    if args.capture_and_exit and args.benchmark_and_exit:
        raise UsageError("--capture-and-exit and --benchmark-and-exit are separate runs", fix="give one of them")
    if args.screenshot and not (args.capture_and_exit or args.benchmark_and_exit):
        raise UsageError("--screenshot goes with --capture-and-exit or --benchmark-and-exit")
    if args.inputs and not args.benchmark_and_exit:
        raise UsageError("--inputs goes with --benchmark-and-exit", fix="add --benchmark-and-exit OUT.json")
    return LaunchOptions(
        model=None if args.model is None else zoo.phone_artifact(args.model),
        segmenter=None if args.segmenter is None else zoo.phone_artifact(args.segmenter),
        threads=args.threads,
        source=args.source,
        data_dir=args.data_dir,
        models_dir=args.models_dir,
        capture_and_exit=args.capture_and_exit,
        screenshot=args.screenshot,
        benchmark_out=args.benchmark_and_exit,
        inputs=args.inputs,
        runs=args.runs,
        warmup=args.warmup,
        threads_list=parse_threads_list(args.threads_list),
        window=_window_size(args.size),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        options = launch_options(args)
        if options.benchmark_out is not None and options.screenshot is None:
            return benchmark_and_exit(options)  # no window needed
        return run_app(options)
    except EdgedermError as exc:
        if args.debug:
            raise
        print(f"demo_app: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a headless run promises one line, never a traceback
        if args.debug:
            raise
        print(f"demo_app: unexpected error ({type(exc).__name__}: {exc}); re-run with --debug for the traceback", file=sys.stderr)
        return 1


def benchmark_and_exit(options: LaunchOptions) -> int:
    paths = selected_artifacts(options.model, options.segmenter, options.models_dir)
    with native_stderr_silenced():
        result = run_benchmark(paths, options.threads_list, options.inputs, runs=options.runs, warmup=options.warmup)
    write_benchmark(result, options.benchmark_out)
    return 0


def run_app(options: LaunchOptions) -> int:
    prepare_kivy_environment(options)
    from .ui.app import EdgedermScreeningApp  # Kivy reads its environment variables on import

    app = EdgedermScreeningApp(options)
    with native_stderr_silenced(options.headless):
        app.preflight()  # loads models and the first still before any window opens: bad input fails here
    app.run()
    if app.failure is not None:
        raise app.failure
    if app.json_line is not None:
        print(app.json_line, flush=True)
    return 0


def prepare_kivy_environment(options: LaunchOptions) -> None:
    os.environ.setdefault("KIVY_NO_ARGS", "1")  # our flags are not Kivy's
    os.environ.setdefault("KIVY_LOG_MODE", "MIXED")  # Kivy's default mode swallows sys.stderr, and our error line with it
    if options.data_dir is not None and "KIVY_HOME" not in os.environ:
        (options.data_dir / "kivy").mkdir(parents=True, exist_ok=True)
        os.environ["KIVY_HOME"] = str(options.data_dir / "kivy")
    if options.headless:
        # stdout carries exactly one JSON line and stderr at most one error line.
        os.environ.setdefault("KIVY_NO_CONSOLELOG", "1")
        os.environ.setdefault("KIVY_NO_FILELOG", "1")
        if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
            # No screen (CI, a server): SDL2 renders into an EGL pbuffer through Mesa instead.
            os.environ.setdefault("SDL_VIDEODRIVER", "offscreen")
    from kivy.config import Config

    Config.set("graphics", "width", str(options.window[0]))
    Config.set("graphics", "height", str(options.window[1]))
    Config.set("graphics", "resizable", "1")
    Config.set("input", "mouse", "mouse,disable_multitouch")
    Config.set("kivy", "exit_on_escape", "1")


def _window_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"bad --size {text!r}", fix="give WIDTHxHEIGHT, e.g. 480x800") from None
    if not (200 <= width <= 4000 and 200 <= height <= 4000):
        raise UsageError(f"--size {text} is out of range", fix="each side between 200 and 4000 pixels")
    return width, height
