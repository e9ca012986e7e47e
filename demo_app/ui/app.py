"""The Kivy App: owns the settings, the history and the capture pipeline, and switches screens.

The headless hooks (``--capture-and-exit``, ``--benchmark-and-exit --screenshot``) run through the
same screens as a person would, then save what the window shows and stop the app.
"""

from __future__ import annotations

import time
from pathlib import Path

from kivy.app import App
from kivy.clock import Clock
from kivy.uix.screenmanager import NoTransition, ScreenManager
from PIL import Image

from edgederm.core.errors import EdgedermError, UsageError
from edgederm.data.images import load_image

from ..android_tflite import load_predictor
from ..benchmark import run_benchmark, write_benchmark
from ..capture import CapturePipeline
from ..contours import draw_contour
from ..history import HistoryStore
from ..presentation import ResultView, json_line, result_view
from ..settings_store import AppSettings, find_artifacts, selected_artifacts, zoo_default
from ..sources import CAMERA, StillFrames, texture_to_image
from .screens import BenchmarkScreen, CameraScreen, HistoryScreen, NoticeScreen, ResultScreen, SettingsScreen
from .widgets import BACKGROUND

BUNDLED_MODELS = Path(__file__).resolve().parents[1] / "models"  # packaged into the APK / IPA
FRAME_WAIT_S = 10.0  # a headless camera capture waits this long for the first frame
SETTLE_FRAMES = 6  # frames drawn (and laid out) between showing a screen and saving it


class EdgedermScreeningApp(App):
    title = "edgederm screening aid"

    def __init__(self, options, **kwargs):
        super().__init__(**kwargs)
        self.options = options
        self.source = options.source
        self.failure: BaseException | None = None  # a headless run's error, re-raised by main after the loop ends
        self.json_line: str | None = None
        self.pipeline: CapturePipeline | None = None
        self.pipeline_error: str | None = None
        self.benchmark_result: dict | None = None
        self._waited = 0.0

    # -- set-up ---------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return Path(self.options.data_dir) if self.options.data_dir else Path(self.user_data_dir)

    def preflight(self) -> None:
        """Everything that can fail on the user's input, before a window opens."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings = AppSettings.load(self.data_dir / "settings.json")
        options = self.options
        if options.model:  # command-line choices win for this session and are not saved
            self.settings.classifier = str(options.model)
        if options.segmenter:
            self.settings.segmenter = str(options.segmenter)
        if options.threads:
            self.settings.threads = options.threads
        if not self.settings.classifier:
            bundled = None if options.headless else self._bundled_classifier()
            if bundled:
                self.settings.classifier = bundled
            else:
                classifier, segmenter = zoo_default()
                self.settings.classifier = str(classifier)
                self.settings.segmenter = self.settings.segmenter or (None if segmenter is None else str(segmenter))
        self.history = HistoryStore(self.data_dir / "history")
        if options.capture_and_exit:
            self.pipeline = self._load_pipeline()
            if self.source != CAMERA:
                StillFrames(self.source).current()
        elif options.benchmark_out is not None:
            paths = selected_artifacts(options.model, options.segmenter, options.models_dir)
            self.benchmark_result = run_benchmark(paths, options.threads_list, options.inputs, runs=options.runs, warmup=options.warmup)
            write_benchmark(self.benchmark_result, options.benchmark_out)
        else:
            self.reload_pipeline()

    def build(self):
        from kivy.core.window import Window  # imported here: importing it opens the window

        Window.clearcolor = BACKGROUND  # every page's background (the screens draw no full-screen rectangle)
        self.screens = ScreenManager(transition=NoTransition())
        for screen in (NoticeScreen, CameraScreen, ResultScreen, HistoryScreen, SettingsScreen, BenchmarkScreen):
            self.screens.add_widget(screen(self))
        return self.screens

    def on_start(self):
        if self.options.capture_and_exit:
            self.go("camera")
            Clock.schedule_once(self._headless_capture, 0)
        elif self.benchmark_result is not None:
            self.go("benchmark")
            self.screens.get_screen("benchmark").show(self.benchmark_result)
            self._when_settled(self._finish)
        elif not self.settings.accepted_notice:
            self.go("notice")
        else:
            self.go("camera")

    def on_pause(self):
        self.flush_history()  # Android may end a paused app without calling on_stop
        return True  # Android: keep the state when the user switches apps

    def on_stop(self):
        self.flush_history()  # a capture's entry is on disk before the app exits

    def flush_history(self) -> None:
        history = getattr(self, "history", None)  # None when preflight failed before the store opened
        if history is not None:
            history.flush()

    # -- what the screens call ------------------------------------------------------------------

    def go(self, name: str) -> None:
        self.screens.current = name

    def accept_notice(self) -> None:
        self.settings.accepted_notice = True
        self.save_settings()
        self.go("camera")

    def save_settings(self) -> None:
        self.settings.save(self.data_dir / "settings.json")

    def reload_pipeline(self) -> str | None:
        """Load the chosen artifacts; the error as one line (shown on screen) or None."""
        try:
            self.pipeline, self.pipeline_error = self._load_pipeline(), None
        except EdgedermError as exc:
            self.pipeline, self.pipeline_error = None, str(exc)
        return self.pipeline_error

    def model_status(self) -> str:
        if self.pipeline is None:
            return f"No model loaded: {self.pipeline_error or 'choose one in Settings'}"
        parts = [f"Model: {self.pipeline.classifier.path.name}"]
        if self.pipeline.segmenter is not None:
            parts.append(f"segmenter: {self.pipeline.segmenter.path.name}")
        parts.append(f"threads: {self.settings.threads or 'default'}")
        return ", ".join(parts)

    def candidate_artifacts(self) -> list[Path]:
        return selected_artifacts(
            self.settings.classifier, self.settings.segmenter, BUNDLED_MODELS, self.data_dir / "models", self.options.models_dir
        )

    def benchmark_paths(self) -> list[Path]:
        """The selected classifier and segmenter, then every bundled artifact."""
        return self.candidate_artifacts()

    def export_folder(self) -> Path:
        folder = self.data_dir / "exports"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def analyse_file(self, path: Path) -> tuple[ResultView, Image.Image] | None:
        """An imported photo: decoded safely, then analysed like a captured frame."""
        try:
            image = load_image(path)
        except EdgedermError as exc:
            self._say(str(exc))
            return None
        return self.analyse(image, str(path))

    def analyse(self, image: Image.Image, where: str) -> tuple[ResultView, Image.Image] | None:
        """Run the pipeline on one frame, show the result screen and store the capture in the history.

        The history entry (JPEG files and an SQLite row) is written on a background thread while the
        result is drawn; ``flush_history`` (on stop and on pause) waits for it.
        """
        if self.pipeline is None:
            self._say(f"No model loaded: {self.pipeline_error or 'choose one in Settings'}")
            return None
        try:
            result = self.pipeline.run(image)
        except EdgedermError as exc:
            self._say(str(exc))
            return None
        view = result_view(result)
        shown = image if result.mask is None else draw_contour(image, result.mask)
        self.screens.get_screen("result").show(view, shown)
        self.go("result")
        self.history.add_later(shown, view, model=self.pipeline.classifier.path.name)
        return view, shown

    def _say(self, message: str) -> None:
        camera = self.screens.get_screen("camera")
        camera.status.text = message
        if self.options.capture_and_exit:
            raise UsageError(message)

    def _bundled_classifier(self) -> str | None:
        """First run on a phone: the first classification artifact packaged with the app."""
        for path in find_artifacts(BUNDLED_MODELS, self.data_dir / "models"):
            try:
                if load_predictor(path).spec.task == "classification":
                    return str(path)
            except EdgedermError:
                continue
        return None

    def _load_pipeline(self) -> CapturePipeline:
        if not self.settings.classifier:
            raise UsageError("no classifier chosen", fix="give --model or choose one in Settings")
        return CapturePipeline.load(self.settings.classifier, self.settings.segmenter, threads=self.settings.threads)

    # -- headless hooks -------------------------------------------------------------------------

    def _headless(self, step, *args) -> None:
        """Run one step of a headless hook; any error ends the app and is reported by main."""
        try:
            step(*args)
        except BaseException as exc:  # noqa: BLE001 - main prints it as one line
            self.failure = exc
            self.stop()

    def _headless_capture(self, _dt) -> None:
        self._headless(self._try_capture)

    def _try_capture(self) -> None:
        camera = self.screens.get_screen("camera")
        preview = camera.preview
        if preview is None or not preview.ready():
            if self._waited >= FRAME_WAIT_S or preview is None:
                reason = camera.unavailable_reason or "the camera sent no picture"
                raise UsageError(f"no camera frame to capture: {reason}", fix="give --source IMAGE or DIR")
            self._waited += 0.1
            Clock.schedule_once(self._headless_capture, 0.1)
            return
        started = time.perf_counter()
        image, where = preview.frame()
        view, _shown = self.analyse(image, where)
        self._context = {
            "model": str(self.pipeline.classifier.path),
            "segmenter": str(self.pipeline.segmenter.path) if self.pipeline.segmenter else None,
            "threads": self.settings.threads,
            "source": where,
            "capture_ms": (time.perf_counter() - started) * 1e3,
        }
        self._view = view
        self._when_settled(self._finish)

    def _when_settled(self, step, frames: int = SETTLE_FRAMES) -> None:
        """Run a headless step after a few drawn frames: a time delay alone can fire before the first layout."""
        if frames <= 0:
            self._headless(step)
            return
        Clock.schedule_once(lambda _dt: self._when_settled(step, frames - 1), 0.05)

    def _finish(self) -> None:
        screenshot = self.options.screenshot
        if screenshot is not None:
            save_screenshot(self.screens, screenshot)
        if self.options.capture_and_exit:
            self.history.flush()  # a failed write fails the run (one line on stderr), as before
            self.json_line = json_line(self._view, **self._context, screenshot=str(screenshot) if screenshot else None)
        self.stop()


def save_screenshot(widget, path: Path) -> Path:
    """Render the widget tree into an offscreen buffer and save it as PNG (works with or without a real screen).

    ``Widget.export_as_image`` with the window's clear colour behind the widgets, as on screen: the
    pages draw no background of their own.
    """
    from kivy.core.window import Window
    from kivy.graphics import ClearBuffers, ClearColor, Fbo, Scale, Translate

    parent = widget.parent.canvas if widget.parent is not None else None
    index = parent.indexof(widget.canvas) if parent is not None else -1
    if index > -1:
        parent.remove(widget.canvas)
    fbo = Fbo(size=widget.size, with_stencilbuffer=True)
    with fbo:
        ClearColor(*Window.clearcolor)
        ClearBuffers()
        Scale(1, -1, 1)
        Translate(-widget.x, -widget.y - widget.height, 0)
    fbo.add(widget.canvas)
    try:
        fbo.draw()
        texture = fbo.texture
        image = texture_to_image(texture.pixels, texture.size, colorfmt="rgba", bottom_row_first=False)
    finally:
        fbo.remove(widget.canvas)
        if index > -1:
            parent.insert(index, widget.canvas)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
