"""The app's screens. Each one draws what the pure modules computed; none of them decides anything medical."""

from __future__ import annotations

import threading
from datetime import datetime
from pathlib import Path

from kivy.clock import Clock
from kivy.metrics import dp
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.gridlayout import GridLayout
from kivy.uix.image import Image as KivyImage
from kivy.uix.popup import Popup
from kivy.uix.screenmanager import Screen
from kivy.uix.scrollview import ScrollView
from kivy.uix.spinner import Spinner
from kivy.uix.textinput import TextInput
from PIL import Image

from edgederm.core.errors import EdgedermError

from ..benchmark import parse_threads_list, run_benchmark, write_benchmark
from ..presentation import DISCLAIMER, ResultView
from .camera import Preview
from .importer import pick_file, pick_image
from .widgets import CALM_GREEN, MUTED, REFER_RED, Panel, ProbabilityBar, Text, button, button_row, texture_from_image

GREY = (0.3, 0.31, 0.34, 1)
NOTICE = (
    "[b]What this app is[/b]\n"
    "A screening aid. It looks at a photo of one skin lesion, estimates which of the lesion types it "
    "was trained on the photo resembles most, and says when the model's score is high enough that a "
    "clinician should look at the lesion.\n\n"
    "[b]What it is not[/b]\n"
    "Not a diagnosis and not a medical device. It can miss melanoma and other skin cancers, and it "
    "can raise false alarms. A result without a referral does not mean a lesion is harmless: if a spot "
    "is new, changing, bleeding, itching or worries you, see a clinician.\n\n"
    "[b]Private by construction[/b]\n"
    "The model runs on this device. Photos and results stay in the app's own storage; the app has no "
    "network access and uploads nothing. You can delete the history at any time."
)


def _page(screen: Screen, title: str) -> BoxLayout:
    """A full-screen vertical layout with a title, added to ``screen``; returns the layout for the body.

    The page background is the window's clear colour (``BACKGROUND``, set by the app), not a
    full-screen rectangle drawn over it: one full-screen fill less per frame.
    """
    root = BoxLayout(orientation="vertical", padding=dp(12), spacing=dp(8))
    root.add_widget(Text(title, size=22, bold=True))
    screen.add_widget(root)
    return root


class NoticeScreen(Screen):
    """First run: what the app is and is not, before any camera opens."""

    def __init__(self, app, **kwargs):
        super().__init__(name="notice", **kwargs)
        page = _page(self, "edgederm screening aid")
        scroll = ScrollView(do_scroll_x=False)
        body = Text(NOTICE, size=16, markup=True)
        scroll.add_widget(body)
        page.add_widget(scroll)
        page.add_widget(button("I understand: this is not a diagnosis", app.accept_notice, height=56))


class CameraScreen(Screen):
    def __init__(self, app, **kwargs):
        super().__init__(name="camera", **kwargs)
        self.app = app
        page = _page(self, "Photograph one lesion")
        page.add_widget(
            button_row(
                button("History", lambda: app.go("history"), color=GREY),
                button("Settings", lambda: app.go("settings"), color=GREY),
                button("Benchmark", lambda: app.go("benchmark"), color=GREY),
                height=40,
            )
        )
        self.preview_area = BoxLayout()
        page.add_widget(self.preview_area)
        self.status = Text("", size=13, color=MUTED)
        page.add_widget(self.status)
        self.capture_button = button("Capture", self.capture, height=64)
        page.add_widget(self.capture_button)
        page.add_widget(button("Import a photo instead", self.import_photo, color=GREY))
        self.preview: Preview | None = None
        self.unavailable_reason: str | None = None

    def on_enter(self, *_):
        self.status.text = self.app.model_status()
        if self.preview is None:
            self.preview = Preview(self.app.source, on_unavailable=self.camera_unavailable)
            self.preview_area.add_widget(self.preview)
            try:
                self.preview.start()
            except EdgedermError as exc:
                self.camera_unavailable(str(exc))

    def on_leave(self, *_):
        if self.preview is not None and self.preview.is_camera:
            self.preview.stop()
            self.preview_area.clear_widgets()
            self.preview = None

    def camera_unavailable(self, reason: str) -> None:
        self.unavailable_reason = reason
        self.capture_button.disabled = True
        self.preview_area.clear_widgets()
        box = BoxLayout(orientation="vertical", spacing=dp(12), padding=dp(16))
        box.add_widget(Text(f"{reason}\n\nYou can import a photo from the gallery or files instead.", size=17, halign="center"))
        box.add_widget(button("Import a photo", self.import_photo, height=56))
        self.preview_area.add_widget(box)
        self.preview = None

    def capture(self) -> None:
        if self.preview is None or not self.preview.ready():
            self.status.text = "No frame yet: wait for the preview, or import a photo."
            return
        try:
            image, where = self.preview.frame()
        except EdgedermError as exc:
            self.status.text = str(exc)
            return
        self.app.analyse(image, where)

    def import_photo(self) -> None:
        pick_image(self.app.analyse_file)


class ResultScreen(Screen):
    def __init__(self, app, **kwargs):
        super().__init__(name="result", **kwargs)
        self.app = app
        page = BoxLayout(orientation="vertical", padding=dp(12), spacing=dp(8))  # on the window's BACKGROUND, like _page
        self.add_widget(page)
        self.banner = Panel(color=REFER_RED, orientation="vertical", padding=dp(10), spacing=dp(2), size_hint_y=None)
        self.banner_title = Text("", size=26, bold=True)
        self.banner_reason = Text("", size=14)
        self.banner.add_widget(self.banner_title)
        self.banner.add_widget(self.banner_reason)
        self.banner.bind(minimum_height=self.banner.setter("height"))
        page.add_widget(self.banner)
        self.photo = KivyImage(fit_mode="contain")
        page.add_widget(self.photo)
        self.named = Text("", size=18, bold=True)  # the class the model names under its decision rule, as `edgederm predict` does
        page.add_widget(self.named)
        self.rows = BoxLayout(orientation="vertical", size_hint_y=None, spacing=dp(4))
        self.rows.bind(minimum_height=self.rows.setter("height"))
        page.add_widget(self.rows)
        # The top-3 rows are built once and refilled by each capture (more are added if a spec ever shows more).
        self._row_widgets = [self._make_row(rank) for rank in range(3)]
        self.details = Text("", size=13, color=MUTED)
        page.add_widget(self.details)
        page.add_widget(Text(DISCLAIMER, size=12, color=MUTED))
        page.add_widget(button_row(button("New photo", lambda: app.go("camera")), button("History", lambda: app.go("history"), color=GREY)))

    def show(self, view: ResultView, shown: Image.Image) -> None:
        """Update the screen in place: the widgets are built once, so a capture only changes texts, bars and the photo."""
        self.banner.set_color(REFER_RED if view.refer else CALM_GREEN)
        self.banner_title.text = view.banner_title
        self.banner_reason.text = view.reason if view.refer else f"{view.reason}. Not a diagnosis: see a clinician if in doubt."
        self.photo.texture = texture_from_image(shown, reuse=self.photo.texture)
        self.photo.canvas.ask_update()  # a reused texture is the same object: redraw it anyway
        self.named.text = f"Named class: {view.predicted.name} ({view.predicted.label}), {view.predicted.percent}"
        while len(self._row_widgets) < len(view.rows):
            self._row_widgets.append(self._make_row(rank=len(self._row_widgets)))
        if len(self.rows.children) != 2 * len(view.rows):  # the first capture, or a classifier with another number of classes
            self.rows.clear_widgets()
            for line, _name, _percent, bar in self._row_widgets[: len(view.rows)]:
                self.rows.add_widget(line)
                self.rows.add_widget(bar)
        for (_line, name, percent, bar), row in zip(self._row_widgets[: len(view.rows)], view.rows, strict=True):
            name.text = f"{row.name} ({row.label})"
            percent.text = row.percent
            bar.value = row.probability
        self.details.text = f"{view.latency_text}\n{view.area_text}"

    @staticmethod
    def _make_row(rank: int) -> tuple[BoxLayout, Text, Text, ProbabilityBar]:
        """One line of the top-3: the class name, its percentage and a bar (the best one larger and bold)."""
        size, bold = (16 if rank == 0 else 14), rank == 0
        line = BoxLayout(orientation="horizontal", size_hint_y=None, spacing=dp(8))
        name = Text("", size=size, bold=bold)
        percent = Text("", size=size, bold=bold, halign="right", size_hint_x=None, width=dp(56))
        line.add_widget(name)
        line.add_widget(percent)
        name.bind(height=lambda _w, h, line=line: setattr(line, "height", h))
        return line, name, percent, ProbabilityBar(0.0)


class HistoryScreen(Screen):
    def __init__(self, app, **kwargs):
        super().__init__(name="history", **kwargs)
        self.app = app
        page = _page(self, "History (on this device only)")
        self.status = Text("", size=13, color=MUTED)
        page.add_widget(self.status)
        scroll = ScrollView(do_scroll_x=False)
        self.list = GridLayout(cols=1, size_hint_y=None, spacing=dp(6))
        self.list.bind(minimum_height=self.list.setter("height"))
        scroll.add_widget(self.list)
        page.add_widget(scroll)
        page.add_widget(button_row(button("Export CSV", self.export), button("Delete all", self.confirm_clear, color=REFER_RED)))
        page.add_widget(button("Back", lambda: app.go("camera"), color=GREY))

    def on_pre_enter(self, *_):
        self.refresh()

    def refresh(self) -> None:
        self.list.clear_widgets()
        entries = self.app.history.list()
        self.status.text = f"{len(entries)} capture(s). Stored in {self.app.history.folder}"
        for entry in entries:
            row = Panel(orientation="horizontal", size_hint_y=None, height=dp(84), padding=dp(6), spacing=dp(8))
            thumb = KivyImage(size_hint_x=None, width=dp(72), fit_mode="contain")
            try:
                thumb.texture = texture_from_image(Image.open(entry.thumbnail))
            except OSError:
                pass  # a thumbnail deleted behind the app's back: the row still shows the result
            row.add_widget(thumb)
            colour = "ff7a7a" if entry.refer else "ffffff"
            text = Text(f"[color={colour}][b]{entry.summary}[/b][/color]\n{entry.when} - {entry.model}", size=13, markup=True)
            row.add_widget(text)
            row.add_widget(
                button("Delete", lambda entry_id=entry.id: self.delete(entry_id), color=GREY, size_hint_x=None, width=dp(72), height=72)
            )
            self.list.add_widget(row)

    def delete(self, entry_id: int) -> None:
        self.app.history.delete(entry_id)
        self.refresh()

    def export(self) -> None:
        path = self.app.export_folder() / f"history-{datetime.now():%Y%m%d-%H%M%S}.csv"
        self.app.history.export_csv(path)
        self.status.text = f"Exported to {path}"

    def confirm_clear(self) -> None:
        content = BoxLayout(orientation="vertical", spacing=dp(8), padding=dp(8))
        popup = Popup(title="Delete the whole history?", content=content, size_hint=(0.9, 0.4))
        content.add_widget(Text("Every stored photo and result will be deleted from this device.", size=15))

        def clear() -> None:
            popup.dismiss()
            count = self.app.history.clear()
            self.refresh()
            self.status.text = f"Deleted {count} capture(s)."

        content.add_widget(button_row(button("Delete", clear, color=REFER_RED), button("Keep", popup.dismiss, color=GREY)))
        popup.open()


def _path_spinner() -> Spinner:
    """A drop-down of artifact paths that keeps the file name visible when the path is long."""
    spinner = Spinner(size_hint_y=None, height=dp(44), shorten=True, shorten_from="left")
    spinner.bind(width=lambda *_: setattr(spinner, "text_size", (spinner.width - dp(16), None)))
    return spinner


class SettingsScreen(Screen):
    NONE = "(none)"
    THREADS = ("default", "1", "2", "4", "8")

    def __init__(self, app, **kwargs):
        super().__init__(name="settings", **kwargs)
        self.app = app
        page = _page(self, "Settings")
        page.add_widget(Text("Classifier artifact", size=15, bold=True))
        self.classifier = _path_spinner()
        page.add_widget(self.classifier)
        page.add_widget(button("Browse for a classifier...", lambda: self.browse(self.classifier), color=GREY, height=40))
        page.add_widget(Text("Segmenter artifact (optional: draws the lesion outline)", size=15, bold=True))
        self.segmenter = _path_spinner()
        page.add_widget(self.segmenter)
        page.add_widget(button("Browse for a segmenter...", lambda: self.browse(self.segmenter), color=GREY, height=40))
        page.add_widget(Text("Inference threads", size=15, bold=True))
        self.threads = Spinner(values=self.THREADS, size_hint_y=None, height=dp(44))
        page.add_widget(self.threads)
        self.status = Text("", size=13, color=MUTED)
        page.add_widget(self.status)
        page.add_widget(BoxLayout())
        page.add_widget(button_row(button("Save", self.save), button("Back", lambda: app.go("camera"), color=GREY)))

    def on_pre_enter(self, *_):
        settings = self.app.settings
        choices = [str(p) for p in self.app.candidate_artifacts()]
        self.classifier.values = choices
        self.classifier.text = settings.classifier or (choices[0] if choices else "")
        self.segmenter.values = [self.NONE, *choices]
        self.segmenter.text = settings.segmenter or self.NONE
        self.threads.text = str(settings.threads) if settings.threads else "default"
        self.status.text = self.app.model_status()

    def browse(self, spinner: Spinner) -> None:
        def chosen(path: Path) -> None:
            spinner.text = str(path)

        pick_file(chosen, patterns=["*.tflite", "*.onnx", "*.mlpackage"], title="Choose a model artifact", dirselect=True)

    def save(self) -> None:
        settings = self.app.settings
        settings.classifier = self.classifier.text or None
        settings.segmenter = None if self.segmenter.text in ("", self.NONE) else self.segmenter.text
        settings.threads = None if self.threads.text == "default" else int(self.threads.text)
        self.app.save_settings()
        error = self.app.reload_pipeline()
        self.status.text = f"Not loaded: {error}" if error else f"Saved. {self.app.model_status()}"


class BenchmarkScreen(Screen):
    """Times every selected or bundled artifact on this device and exports the JSON that `edgederm verify` merges."""

    def __init__(self, app, **kwargs):
        super().__init__(name="benchmark", **kwargs)
        self.app = app
        self.result: dict | None = None
        page = _page(self, "On-device latency")
        self.artifacts = Text("", size=13, color=MUTED)
        page.add_widget(self.artifacts)
        form = GridLayout(cols=2, size_hint_y=None, height=dp(88), spacing=dp(6))
        form.add_widget(Text("Timed runs", size=15))
        self.runs = TextInput(text=str(app.options.runs), multiline=False, input_filter="int", size_hint_y=None, height=dp(40))
        form.add_widget(self.runs)
        form.add_widget(Text("Thread counts", size=15))
        self.threads = TextInput(text=",".join(map(str, app.options.threads_list)), multiline=False, size_hint_y=None, height=dp(40))
        form.add_widget(self.threads)
        page.add_widget(form)
        self.table = Text("", size=14)
        scroll = ScrollView(do_scroll_x=False)
        scroll.add_widget(self.table)
        page.add_widget(scroll)
        self.status = Text("", size=13, color=MUTED)
        page.add_widget(self.status)
        self.run_button = button("Run benchmark", self.start)
        page.add_widget(button_row(self.run_button, button("Export JSON", self.export)))
        page.add_widget(button("Back", lambda: app.go("camera"), color=GREY))

    def on_pre_enter(self, *_):
        paths = self.app.benchmark_paths()
        self.artifacts.text = "Artifacts: " + (", ".join(p.name for p in paths) if paths else "none selected (see Settings)")

    def start(self) -> None:
        try:
            runs, threads = max(1, int(self.runs.text or "1")), parse_threads_list(self.threads.text)
        except (ValueError, EdgedermError) as exc:
            self.status.text = str(exc)
            return
        paths = self.app.benchmark_paths()
        self.run_button.disabled = True
        self.status.text = "Running: warm-up, then timed runs per thread count..."

        def work() -> None:
            try:
                result = run_benchmark(paths, threads, runs=runs, warmup=self.app.options.warmup, progress=self._progress)
            except Exception as exc:  # noqa: BLE001 - shown on screen; the app keeps running
                Clock.schedule_once(lambda _dt, message=str(exc): self._finished(None, message))
                return
            Clock.schedule_once(lambda _dt: self._finished(result, None))

        threading.Thread(target=work, daemon=True).start()

    def show(self, result: dict) -> None:
        self.result = result
        self.artifacts.text = "Artifacts: " + ", ".join(a["name"] for a in result["artifacts"])
        lines = [f"[b]{result['device']['name']}[/b] ({result['device']['machine']})"]
        for artifact in result["artifacts"]:
            lines.append(f"\n[b]{artifact['name']}[/b]  {artifact['format']} {artifact['quant'] or ''}")
            for row in artifact["latency"]:
                lines.append(
                    f"  {row['threads']} thread(s): median {row['median_ms']:.1f} ms, p90 {row['p90_ms']:.1f} ms, min {row['min_ms']:.1f} ms"
                )
        lines.append(f"\n{artifact['latency'][0]['runs']} timed runs after {artifact['latency'][0]['warmup']} warm-up runs each.")
        self.table.markup = True
        self.table.text = "\n".join(lines)

    def export(self) -> None:
        if self.result is None:
            self.status.text = "Run the benchmark first."
            return
        path = write_benchmark(self.result, self.app.export_folder() / f"benchmark-{datetime.now():%Y%m%d-%H%M%S}.json")
        self.status.text = f"Exported to {path}"

    def _progress(self, message: str) -> None:
        Clock.schedule_once(lambda _dt: setattr(self.status, "text", message))

    def _finished(self, result: dict | None, error: str | None) -> None:
        self.run_button.disabled = False
        if error:
            self.status.text = f"Failed: {error}"
            return
        self.show(result)
        self.status.text = "Done. Export JSON to merge it with `edgederm verify --device-results`."
