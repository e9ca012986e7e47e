"""The Kivy demo app (demo_app/): its pure modules, its privacy promises and its headless hooks end to end.

The pure modules run without a display. The tests that start Kivy need a screen: they use SDL2's
``offscreen`` video driver (an EGL pbuffer through Mesa's libEGL, no X server and no apt package on
this machine image), fall back to an Xvfb the fixture starts itself, and are skipped with the reason
only when neither can draw a frame.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, cli_env, corrupt_jpeg, write_images
from PIL import Image

sys.path.insert(0, str(REPO))  # demo_app runs from the repository root; it is not part of the installed package

from demo_app.benchmark import ARTIFACT_KEYS, LATENCY_KEYS, parse_threads_list, run_benchmark, write_benchmark
from demo_app.capture import CapturePipeline
from demo_app.contours import area_fraction, contour, draw_contour
from demo_app.history import CSV_COLUMNS, HistoryStore
from demo_app.presentation import NO_REFER_TITLE, REFER_TITLE, result_view
from demo_app.settings_store import AppSettings, find_artifacts, selected_artifacts
from demo_app.sources import StillFrames, texture_to_image
from edgederm.bench import DEVICE_KEYS, unpack_masks
from edgederm.core.errors import EdgedermError, ImageError, ModelError
from edgederm.core.formats import FORMATS
from edgederm.core.manifest import read_manifest
from edgederm.core.preprocess import Preprocess
from edgederm.core.spec import ModelSpec
from edgederm.data.images import load_image
from edgederm.data.synthetic import plan_synthetic, render_synthetic
from edgederm.export import export_run
from edgederm.runtime.readout import screen

WINDOW = (480, 800)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def artifacts(trained_run: Path) -> dict[str, Path]:
    """The session's tiny classifier exported to TFLite and ONNX (fp32)."""
    out = trained_run.parent / "demo_app_export"
    records = export_run(trained_run, [FORMATS["tflite"], FORMATS["onnx"]], ["fp32"], out)
    assert all(r.status == "ok" for r in records), [(r.path, r.message) for r in records]
    return {r.format: out / r.path for r in records}


@pytest.fixture(scope="module")
def segmenter_artifact(trained_segmenter: Path, lesion, tmp_path_factory) -> Path:
    """The session's tiny lesion segmenter exported to TFLite (fp32), its threshold set to give ``lesion`` an outline.

    Three epochs on 48 synthetic photos leave every lesion probability below 0.5, so at the trained
    threshold every mask is empty. The threshold lives in spec.json (like a classifier's operating
    point): set it to the median probability on the fixture photo, so the masks compared are not all empty.
    """
    from edgederm.runtime import Predictor
    from edgederm.runtime.readout import lesion_probabilities

    run = tmp_path_factory.mktemp("demo_app_seg") / "run"
    shutil.copytree(trained_segmenter, run)
    reference = Predictor.load(run)
    probs = lesion_probabilities(reference.predict_pixels(reference.spec.preprocess.fit(Image.open(lesion[0]))[None]))
    spec = json.loads((run / "spec.json").read_text())
    spec["postprocess"]["threshold"] = float(np.median(probs))
    (run / "spec.json").write_text(json.dumps(spec, indent=2))
    records = export_run(run, [FORMATS["tflite"]], ["fp32"], run.parent / "export")
    assert all(r.status == "ok" for r in records), [(r.path, r.message) for r in records]
    return run.parent / "export" / records[0].path


@pytest.fixture(scope="module")
def lesion(tmp_path_factory) -> tuple[Path, Path]:
    """One synthetic dermoscopy photo (320x240 JPEG) and its exact lesion mask (PNG)."""
    folder = tmp_path_factory.mktemp("lesion")
    image, mask = render_synthetic(plan_synthetic(1, 11)[0], size=(320, 240))
    image.save(folder / "lesion.jpg", quality=92)
    Image.fromarray(mask).save(folder / "lesion_mask.png")
    return folder / "lesion.jpg", folder / "lesion_mask.png"


@pytest.fixture(scope="session")
def kivy_env(tmp_path_factory) -> dict[str, str]:
    """Environment for a subprocess that opens a Kivy window: offscreen SDL2, else an Xvfb started here."""
    if importlib.util.find_spec("kivy") is None:  # not imported here: importing Kivy rewires this process's logging and stderr
        pytest.skip("kivy is not installed: pip install -e '.[app]' (the demo app's extra)")
    home = tmp_path_factory.mktemp("kivy_home")
    env = {**cli_env(), "KIVY_HOME": str(home), "KIVY_NO_CONSOLELOG": "1", "KIVY_NO_FILELOG": "1", "KIVY_LOG_MODE": "MIXED"}
    offscreen = {**env, "SDL_VIDEODRIVER": "offscreen"}
    offscreen.pop("DISPLAY", None)
    offscreen.pop("WAYLAND_DISPLAY", None)
    tried = [f"SDL offscreen: {_probe_display(offscreen, home)}"]
    if tried[0].endswith("ok"):
        yield offscreen
        return
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        tried.append("Xvfb: not installed (apt-get install xvfb)")
        pytest.skip("no display can be made for Kivy: " + "; ".join(tried))
    display = f":{90 + os.getpid() % 100}"
    server = subprocess.Popen([xvfb, display, "-screen", "0", "1024x1024x24", "-nolisten", "tcp"], stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        on_xvfb = {**env, "DISPLAY": display}
        tried.append(f"Xvfb: {_probe_display(on_xvfb, home)}")
        if not tried[-1].endswith("ok"):
            pytest.skip("no display can be made for Kivy: " + "; ".join(tried))
        yield on_xvfb
    finally:
        server.terminate()
        server.wait(timeout=10)


PROBE = """
import sys
from kivy.app import App
from kivy.clock import Clock
from kivy.uix.label import Label
class Probe(App):
    def build(self):
        Clock.schedule_once(lambda _dt: self.stop(), 0.2)
        return Label(text="probe")
Probe().run()
print("drawn")
"""


def _probe_display(env: dict[str, str], home: Path) -> str:
    script = home / "probe.py"  # a file, not -c: Kivy's App looks up the source file of its subclass
    script.write_text(PROBE)
    try:
        done = subprocess.run([sys.executable, script], env={**env, "KIVY_NO_ARGS": "1"}, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "timed out"
    return (
        "ok" if done.returncode == 0 and "drawn" in done.stdout else f"failed ({(done.stderr.strip().splitlines() or ['no output'])[-1]})"
    )


def _spec(class_names=("bkl", "mel", "nv", "vasc"), operating_point=None, task="classification") -> ModelSpec:
    return ModelSpec(
        task=task,
        arch="test",
        class_names=list(class_names),
        preprocess=Preprocess(input_size=32),
        output="probabilities" if task == "classification" else "mask_probabilities",
        operating_point=operating_point or {},
    )


class FixedClassifier:
    """A stand-in Predictor that answers the same probabilities for every photo."""

    def __init__(self, spec: ModelSpec, probs):
        self.spec, self.path, self.probs = spec, Path("fixed.tflite"), np.asarray(probs, np.float32)

    def predict_pixels(self, pixels):
        assert pixels.shape == (1, 32, 32, 3) and pixels.dtype == np.uint8
        return self.probs[None]


class MaskSegmenter:
    """A stand-in segmenter with the coming ``Predictor.predict_mask`` interface: returns a fixed mask."""

    def __init__(self, mask: np.ndarray):
        self.spec, self.path, self.mask = _spec(("lesion",), task="segmentation"), Path("mask.tflite"), mask

    def predict_mask(self, image):
        return np.asarray(Image.fromarray(self.mask).resize(image.size, Image.NEAREST))


def _disc(size=(60, 40), centre=(30, 20), radius=10) -> np.ndarray:
    yy, xx = np.mgrid[: size[1], : size[0]]
    return np.where((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2, 255, 0).astype(np.uint8)


# -- contours and lesion area -------------------------------------------------------------------


def test_contour_is_the_lesion_border_only():
    mask = _disc()
    outline = contour(mask)
    lesion = mask >= 128
    assert outline.any() and not (outline & ~lesion).any(), "the outline lies inside the lesion"
    assert lesion[20, 30] and not outline[20, 30], "the centre is not on the outline"
    assert outline[20, 20] and outline[20, 40], "the leftmost and rightmost lesion pixels are on the outline"
    assert contour(mask, thickness=3).sum() > outline.sum()
    assert not contour(np.zeros((10, 10), np.uint8)).any()


def test_contour_closes_along_the_frame_edge():
    mask = np.zeros((20, 20), np.uint8)
    mask[:, :10] = 255  # a lesion cut by the left edge
    outline = contour(mask)
    assert outline[:, 0].all() and outline[0, :10].all() and outline[:, 9].all()
    assert not outline[5:15, 2:8].any()


def test_area_fraction_and_drawn_outline():
    mask = np.zeros((40, 50), np.uint8)
    mask[10:20, 10:30] = 255
    assert area_fraction(mask) == pytest.approx(200 / 2000)
    assert area_fraction(np.full((4, 4), 127, np.uint8)) == 0.0
    photo = Image.new("RGB", (50, 40), (200, 150, 140))
    drawn = np.asarray(draw_contour(photo, mask, color=(255, 0, 0), thickness=1))
    painted = (drawn == (255, 0, 0)).all(axis=-1)
    assert np.array_equal(painted, contour(mask, 1))
    assert (drawn[~painted] == (200, 150, 140)).all(), "only the outline is painted"
    with pytest.raises(ValueError, match="mask is"):
        draw_contour(photo, mask[:, :10])


# -- capture pipeline ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_capture_pipeline_with_an_exported_classifier(artifacts, lesion, fmt):
    pipeline = CapturePipeline.load(artifacts[fmt], threads=1)
    photo = Image.open(lesion[0])
    result = pipeline.run(photo)
    spec = pipeline.classifier.spec
    assert result.class_names == tuple(spec.class_names)
    assert sum(result.probabilities) == pytest.approx(1.0, abs=1e-4)
    expected = pipeline.classifier.predict_pixels(spec.preprocess.fit(photo)[None])[0]
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)
    assert result.screening == screen(spec, np.asarray(result.probabilities))
    assert len(result.screening.top) == 3 and result.screening.top[0][2] == max(result.probabilities)
    assert result.mask is None and result.lesion_area_fraction is None and result.segmenter_ms is None
    assert result.classifier_ms > 0 and result.latency_ms == result.classifier_ms
    view = result_view(result)
    assert [r.label for r in view.rows] == [code for code, _, _ in result.screening.top]
    assert view.banner_title == (REFER_TITLE if result.screening.refer else NO_REFER_TITLE)


def test_tflite_and_onnx_pipelines_agree(artifacts, lesion):
    photo = Image.open(lesion[0])
    tflite, onnx = (CapturePipeline.load(artifacts[f]).run(photo) for f in ("tflite", "onnx"))
    np.testing.assert_allclose(tflite.probabilities, onnx.probabilities, atol=1e-4)


def test_capture_with_a_segmenter_outlines_the_lesion(lesion):
    photo = Image.open(lesion[0])
    mask = np.asarray(Image.open(lesion[1]))
    pipeline = CapturePipeline(FixedClassifier(_spec(), [0.1, 0.2, 0.6, 0.1]), MaskSegmenter(mask))
    result = pipeline.run(photo)
    assert np.array_equal(result.mask, mask)
    assert result.lesion_area_fraction == pytest.approx((mask >= 128).mean())
    assert result.segmenter_ms is not None and result.latency_ms == pytest.approx(result.classifier_ms + result.segmenter_ms)
    view = result_view(result)
    assert "Lesion covers" in view.area_text and "segmenter" in view.latency_text
    assert view.to_dict()["lesion_area_fraction"] == result.lesion_area_fraction


def test_capture_refuses_a_wrong_segmenter(lesion):
    photo = Image.open(lesion[0])
    classifier = FixedClassifier(_spec(), [0.1, 0.2, 0.6, 0.1])
    with pytest.raises(ModelError, match="classifier is a segmentation model"):
        CapturePipeline(MaskSegmenter(np.zeros((4, 4), np.uint8)))
    with pytest.raises(ModelError, match="segmenter is a classification model"):
        CapturePipeline(classifier, FixedClassifier(_spec(), [0.25] * 4))
    no_masks = MaskSegmenter(np.zeros((4, 4), np.uint8))
    no_masks.predict_mask = None  # a runtime from before Predictor.predict_mask
    with pytest.raises(ModelError, match="cannot run segmenters yet"):
        CapturePipeline(classifier, no_masks).run(photo)
    wrong_size = MaskSegmenter(np.zeros((4, 4), np.uint8))
    wrong_size.predict_mask = lambda image: np.zeros((3, 3), np.uint8)
    with pytest.raises(ModelError, match="mask for a 320x240 photo"):
        CapturePipeline(classifier, wrong_size).run(photo)


# -- the refer banner follows screening.screen and the spec's operating point -------------------

TUNED = {"classes": ["mel"], "threshold": 0.3, "target_sensitivity": 0.9}


@pytest.mark.parametrize(
    ("operating_point", "probs", "refer", "reason"),
    [
        (TUNED, [0.05, 0.35, 0.55, 0.05], True, "malignant score 0.35 >= threshold 0.30 (set for 90% sensitivity"),
        (TUNED, [0.05, 0.20, 0.70, 0.05], False, "below the referral threshold"),
        (TUNED, [0.30, 0.25, 0.25, 0.20], True, "uncertain: top probability 0.30 < 0.50"),
        ({}, [0.10, 0.60, 0.20, 0.10], True, "top class is Melanoma (no tuned threshold in this model)"),
        ({}, [0.10, 0.20, 0.60, 0.10], False, "below the referral threshold"),
    ],
)
def test_refer_banner_follows_the_operating_point(lesion, operating_point, probs, refer, reason):
    spec = _spec(operating_point=operating_point)
    view = result_view(CapturePipeline(FixedClassifier(spec, probs)).run(Image.open(lesion[0])))
    assert view.refer is refer
    assert view.banner_title == (REFER_TITLE if refer else NO_REFER_TITLE)
    assert view.reason.startswith(reason)
    assert view.threshold == operating_point.get("threshold")
    assert [r.probability for r in view.rows] == pytest.approx(sorted(probs, reverse=True)[:3])
    assert view.rows[0].name != view.rows[0].label, "full names are shown, not only dx codes"


# -- history ------------------------------------------------------------------------------------


def _view(probs=(0.1, 0.2, 0.6, 0.1), operating_point=None):
    return result_view(CapturePipeline(FixedClassifier(_spec(operating_point=operating_point), probs)).run(Image.new("RGB", (64, 48))))


def test_history_add_list_export_delete(tmp_path):
    store = HistoryStore(tmp_path / "history")
    photo = Image.new("RGB", (640, 480), (180, 120, 110))
    first = store.add(photo, _view(), model="a.tflite")
    second = store.add(photo, _view((0.1, 0.7, 0.1, 0.1)), model="=cmd|evil.onnx")
    entries = store.list()
    assert [e.id for e in entries] == [second.id, first.id], "newest first"
    assert second.refer and not first.refer and first.top3[0]["label"] == "nv" and first.top3[0]["name"] == "Melanocytic naevus"
    assert first.photo.is_file() and Image.open(first.thumbnail).size[0] <= 160
    assert first.photo.parent == tmp_path / "history" / "photos", "photos stay in the app's data folder"
    assert HistoryStore(tmp_path / "history").list() == entries, "the history survives a restart"

    exported = store.export_csv(tmp_path / "out" / "history.csv")
    rows = list(csv.DictReader(exported.open(encoding="utf-8")))
    assert tuple(rows[0]) == CSV_COLUMNS and [int(r["id"]) for r in rows] == [first.id, second.id]
    assert rows[0]["top1_label"] == "nv" and float(rows[0]["top1_probability"]) == pytest.approx(0.6, abs=1e-4)
    assert rows[1]["refer"] == "1" and rows[1]["model"].startswith("'="), "a formula-like cell is defused"
    assert rows[0]["lesion_area_fraction"] == "" and rows[0]["latency_ms"]

    store.delete(first.id)
    assert [e.id for e in store.list()] == [second.id] and not first.photo.exists() and not first.thumbnail.exists()
    with pytest.raises(KeyError):
        store.delete(first.id)
    assert store.clear() == 1 and store.list() == [] and not any((tmp_path / "history" / "photos").iterdir())
    assert len(list(csv.reader(store.export_csv(tmp_path / "empty.csv").open()))) == 1


# A process that queues a capture's history entry and exits at once, without flush(); the write is
# slowed down so the process reaches its end while the entry is still pending.
EXIT_RIGHT_AFTER_A_CAPTURE = r"""
import sys, time
from PIL import Image
from demo_app.history import HistoryStore
from demo_app.presentation import ClassRow, ResultView

write = HistoryStore._write
HistoryStore._write = lambda *args: (time.sleep(0.5), write(*args))[1]
mel = ClassRow("mel", "Melanoma", 0.7)
view = ResultView(True, "Refer", "melanoma score high", 0.7, 0.5, (mel,), mel, None, 12.0, 12.0, None)
store = HistoryStore(sys.argv[1])
store.add_later(Image.new("RGB", (64, 48)), view, model="exit.tflite")
assert store.pending == 1
"""


def test_history_add_later_writes_in_the_background_and_loses_nothing(tmp_path):
    store = HistoryStore(tmp_path / "history")
    photo = Image.new("RGB", (640, 480), (180, 120, 110))
    store.add_later(photo, _view(), model="a.tflite")
    store.add_later(photo, _view((0.1, 0.7, 0.1, 0.1)), model="b.tflite")
    entries = store.list()  # a read waits for the pending writes
    assert store.pending == 0 and [e.model for e in entries] == ["b.tflite", "a.tflite"], "both stored, in capture order"
    assert entries[0].refer and entries[1].top3[0]["label"] == "nv"
    assert all(e.photo.is_file() and Image.open(e.thumbnail).size[0] <= 160 for e in entries)
    assert HistoryStore(tmp_path / "history").list() == entries, "the history survives a restart"

    done = subprocess.run(
        [sys.executable, "-c", EXIT_RIGHT_AFTER_A_CAPTURE, str(tmp_path / "history")],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    latest = HistoryStore(tmp_path / "history").list()[0]
    assert latest.model == "exit.tflite" and latest.photo.is_file(), "an entry still pending when the process exits is written"

    shutil.rmtree(store.photos)  # the write fails (no photos folder): flush reports it on the caller's thread
    store.add_later(photo, _view(), model="c.tflite")
    with pytest.raises(OSError):
        store.flush()
    store.flush()  # reported once


# -- settings, sources --------------------------------------------------------------------------


def test_settings_round_trip_and_artifact_discovery(tmp_path, artifacts):
    path = tmp_path / "settings.json"
    assert AppSettings.load(path) == AppSettings()
    AppSettings(classifier="a.tflite", threads=2, accepted_notice=True).save(path)
    assert AppSettings.load(path) == AppSettings(classifier="a.tflite", segmenter=None, threads=2, accepted_notice=True)
    path.write_text("{not json")
    assert AppSettings.load(path) == AppSettings(), "a damaged settings file falls back to the defaults"
    folder = artifacts["tflite"].parent
    assert set(find_artifacts(folder, None, tmp_path / "missing")) == {artifacts["tflite"], artifacts["onnx"]}
    assert selected_artifacts(artifacts["onnx"], None, folder) == [artifacts["onnx"], artifacts["tflite"]]


def test_still_frames_replay_a_folder(tmp_path, lesion):
    for name in ("b.png", "a.jpg"):
        Image.open(lesion[0]).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    frames = StillFrames(tmp_path)
    assert [p.name for p in frames.paths] == ["a.jpg", "b.png"]
    assert frames.current().size == (320, 240) and frames.advance().name == "b.png" and frames.advance().name == "a.jpg"
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgedermError, match="no images in this folder"):
        StillFrames(tmp_path / "empty")
    with pytest.raises(EdgedermError, match="no such image or folder"):
        StillFrames(tmp_path / "nope.jpg")


def test_texture_pixels_become_an_upright_photo():
    top_red = np.zeros((2, 3, 4), np.uint8)
    top_red[0] = (255, 0, 0, 255)  # the photo's top row, red
    stored_bottom_up = top_red[::-1].tobytes()
    assert texture_to_image(stored_bottom_up, (3, 2)).getpixel((0, 0)) == (255, 0, 0)
    assert texture_to_image(top_red.tobytes(), (3, 2), bottom_row_first=False).getpixel((0, 0)) == (255, 0, 0)
    assert texture_to_image(top_red[..., [2, 1, 0, 3]].tobytes(), (3, 2), colorfmt="bgra", bottom_row_first=False).getpixel((0, 0)) == (
        255,
        0,
        0,
    )


# -- the Android TFLite fallback (pyjnius + Google's Java interpreter) ----------------------------


class StandInJava:
    """The handful of Java classes the fallback calls, backed by the Python TFLite interpreter."""

    class File:
        def __init__(self, path):
            self.path = path

    class Options:
        threads = None

        def setNumThreads(self, n):
            self.threads = n

    class Interpreter:
        def __init__(self, file, options):
            from edgederm.runtime.tflite_backend import TFLitePredictor

            self.real, self.options = TFLitePredictor(Path(file.path)), options

        def getOutputTensor(self, index):
            return type("Tensor", (), {"shape": lambda _self: list(self.real.output["shape"])})()

        def run(self, data, buffer):
            assert data.byte_order == "native"
            real = self.real
            real.interpreter.set_tensor(real.input["index"], np.frombuffer(data.content, np.float32).reshape(real.input["shape"]))
            real.interpreter.invoke()
            buffer.values = real.interpreter.get_tensor(real.output["index"]).ravel().tolist()

    class ByteBuffer:
        byte_order = "big"  # Java's default

        def __init__(self, content):
            self.content = content

        @classmethod
        def wrap(cls, content):
            assert isinstance(content, bytes)
            return cls(content)

        def order(self, byte_order):
            self.byte_order = byte_order
            return self

    class ByteOrder:
        @staticmethod
        def nativeOrder():
            return "native"

    class TensorBuffer:
        @classmethod
        def createFixedSize(cls, shape, dtype):
            assert dtype == "FLOAT32"
            buffer = type("Buffer", (), {"values": None, "rewind": lambda self: self})()
            return type("TB", (), {"getBuffer": lambda self: buffer, "getFloatArray": lambda self: buffer.values})()

    FLOAT32 = "FLOAT32"


def test_android_tflite_fallback_matches_the_python_runtime(artifacts, lesion, monkeypatch):
    from demo_app.android_tflite import AndroidTFLitePredictor, load_predictor
    from edgederm.runtime import Predictor

    java = StandInJava()
    fallback = AndroidTFLitePredictor(artifacts["tflite"], threads=2, java=java)
    reference = Predictor.load(artifacts["tflite"])
    pixels = np.stack(
        [reference.spec.preprocess.fit(Image.open(lesion[0])), reference.spec.preprocess.fit(Image.open(lesion[0]).rotate(90))]
    )
    np.testing.assert_allclose(fallback.predict_pixels(pixels), reference.predict_pixels(pixels), atol=1e-6)
    assert fallback.spec.class_names == reference.spec.class_names
    assert CapturePipeline(fallback).run(Image.open(lesion[0])).screening == CapturePipeline(reference).run(Image.open(lesion[0])).screening
    monkeypatch.delenv("ANDROID_ARGUMENT", raising=False)
    assert type(load_predictor(artifacts["tflite"])).__name__ == "TFLitePredictor", "off Android the normal runtime is used"


# -- benchmark ----------------------------------------------------------------------------------


def _check_benchmark_schema(result: dict, paths: list[Path], threads: list[int], runs: int, warmup: int) -> None:
    assert set(result) == {"device", "created", "inputs", "artifacts"} and result["inputs"] is None
    assert tuple(result["device"]) == DEVICE_KEYS
    assert all(isinstance(result["device"][k], str) and result["device"][k] for k in ("name", "machine", "cpu", "os", "python"))
    assert {"numpy", "onnxruntime"} <= set(result["device"]["runtimes"])
    assert "T" in result["created"]
    assert [a["path"] for a in result["artifacts"]] == [str(p) for p in paths]
    for artifact, path in zip(result["artifacts"], paths, strict=True):
        assert tuple(artifact) == ARTIFACT_KEYS
        assert artifact["name"] == path.name and artifact["format"] == path.suffix.lstrip(".") and artifact["quant"] == "fp32"
        assert artifact["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert [row["threads"] for row in artifact["latency"]] == threads
        for row in artifact["latency"]:
            assert tuple(row) == LATENCY_KEYS and row["runs"] == runs and row["warmup"] == warmup
            assert 0 < row["min_ms"] <= row["median_ms"] <= row["p90_ms"]
            assert row["load_ms"] > 0 and row["peak_rss_mb"] > 0


def test_benchmark_json_schema(artifacts, tmp_path):
    paths = [artifacts["tflite"], artifacts["onnx"]]
    seen: list[str] = []
    result = run_benchmark(paths, [1, 2], runs=3, warmup=1, progress=seen.append)
    _check_benchmark_schema(result, paths, [1, 2], 3, 1)
    assert len(seen) == 4
    manifest = {a["path"]: a["sha256"] for a in read_manifest(paths[0].parent)["artifacts"]}
    assert all(a["sha256"] == manifest[a["name"]] for a in result["artifacts"]), "the same sha256 as the export manifest"
    written = write_benchmark(result, tmp_path / "device.json")
    assert json.loads(written.read_text()) == result
    assert parse_threads_list("1, 2,2,4") == [1, 2, 4]
    for bad in ("", "0", "a,b"):
        with pytest.raises(EdgedermError, match="bad thread list"):
            parse_threads_list(bad)
    with pytest.raises(EdgedermError, match="no model artifacts"):
        run_benchmark([], [1])


def test_benchmark_and_exit_needs_no_display(artifacts, tmp_path):
    out = tmp_path / "bench" / "device.json"
    env = {k: v for k, v in cli_env().items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    done = _run_app(
        [
            "--model",
            artifacts["tflite"],
            "--models-dir",
            artifacts["onnx"].parent,
            "--benchmark-and-exit",
            out,
            "--runs",
            "3",
            "--warmup",
            "1",
            "--threads-list",
            "1,2",
        ],
        env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    _check_benchmark_schema(json.loads(out.read_text()), [artifacts["tflite"], artifacts["onnx"]], [1, 2], 3, 1)


def _edgederm_bench(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgederm.bench", *map(str, args)], env=cli_env(), capture_output=True, text=True, timeout=300
    )


def test_benchmark_and_exit_records_the_outputs_edgederm_bench_records(artifacts, segmenter_artifact, tmp_path):
    write_images(tmp_path, 3, seed=5)
    photos, from_app, from_bench = tmp_path / "images", tmp_path / "app.json", tmp_path / "bench.json"
    env = {k: v for k, v in cli_env().items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    done = _run_app(
        ["--model", artifacts["tflite"], "--segmenter", segmenter_artifact, "--benchmark-and-exit", from_app, "--inputs", photos]
        + ["--runs", "2", "--warmup", "0"],
        env,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
    done = _edgederm_bench(artifacts["tflite"], segmenter_artifact, "--inputs", photos, "--runs", "2", "--warmup", "0", "--out", from_bench)
    assert done.returncode == 0, done.stderr[-2000:]
    app, bench = json.loads(from_app.read_text()), json.loads(from_bench.read_text())
    assert app["inputs"] == bench["inputs"] == {"path": str(photos), "n": 3}
    assert [a["sha256"] for a in app["artifacts"]] == [a["sha256"] for a in bench["artifacts"]]
    (app_probs, app_masks), (bench_probs, bench_masks) = ([a["outputs"] for a in doc["artifacts"]] for doc in (app, bench))
    assert app_probs["names"] == bench_probs["names"] == sorted(p.name for p in photos.iterdir())
    assert app_probs["class_names"] == bench_probs["class_names"]
    np.testing.assert_allclose(app_probs["probabilities"], bench_probs["probabilities"], atol=1e-6)
    assert app_masks["names"] == bench_masks["names"] and app_masks["mask_shape"] == bench_masks["mask_shape"]
    np.testing.assert_array_equal(unpack_masks(app_masks), unpack_masks(bench_masks))


def test_inputs_without_the_benchmark_is_a_usage_error(artifacts, tmp_path):
    done = _run_app(["--model", artifacts["tflite"], "--inputs", tmp_path], cli_env())
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "demo_app: --inputs goes with --benchmark-and-exit (fix: add --benchmark-and-exit OUT.json)"
    ]


@pytest.mark.parametrize("case", ["missing", "corrupt"])
def test_bad_benchmark_inputs_give_edgederm_bench_s_error(artifacts, tmp_path, case):
    inputs = tmp_path / "inputs.npz"
    if case == "corrupt":
        np.savez(inputs, pixels=np.zeros((2, 8, 8, 3), np.uint8))
        inputs.write_bytes(inputs.read_bytes()[:100])
    app = _run_app(["--model", artifacts["tflite"], "--benchmark-and-exit", tmp_path / "app.json", "--inputs", inputs], cli_env())
    bench = _edgederm_bench(artifacts["tflite"], "--inputs", inputs, "--out", tmp_path / "bench.json")
    assert app.returncode == bench.returncode != 0 and app.stdout == ""
    (app_line,) = app.stderr.strip().splitlines()
    (bench_line,) = [line for line in bench.stderr.strip().splitlines() if not line.startswith("INFO: ")]
    assert app_line.removeprefix("demo_app: ") == bench_line.removeprefix("edgederm-bench: error: ")
    assert app_line.startswith(f"demo_app: {inputs}: ") and not (tmp_path / "app.json").exists()


def _markdown_table(text: str) -> tuple[list[str], list[list[str]]]:
    """The artifact table of a verify.md: (header, rows) as cell strings."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| artifact |"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return table[0], table[2:]


def test_benchmark_export_merges_into_verify(artifacts, tmp_path):
    export_dir = artifacts["tflite"].parent  # export_run's folder: both artifacts and manifest.json
    bench = tmp_path / "phone.json"
    env = {k: v for k, v in cli_env().items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    done = _run_app(["--model", artifacts["tflite"], "--benchmark-and-exit", bench, "--runs", "3", "--warmup", "1"], env)
    assert done.returncode == 0, done.stderr[-2000:]
    phone = json.loads(bench.read_text())
    (measured,) = phone["artifacts"]
    label = phone["device"]["name"]

    verify_json, report = tmp_path / "v.json", tmp_path / "report"
    done = subprocess.run(
        [sys.executable, "-m", "edgederm", "verify", export_dir, "--data", "synthetic:40,seed=11", "--runs", "3", "--warmup", "0"]
        + ["--saliency", "0", "--no-emulate-coreml", "--quiet", "--device-results", bench, "--json", verify_json, "--report", report],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode in (0, 1), done.stderr[-2000:]  # 1: an artifact missed a bound, which is not this test's subject

    header, rows = _markdown_table((report / "verify.md").read_text())
    column = header.index(f"{label} (device)")
    cells = {row[0]: row[column] for row in rows}
    expected = " / ".join(f"{t['median_ms']:.2f} ms @{t['threads']}" for t in measured["latency"])
    assert cells["tflite fp32"] == expected, cells
    assert cells["onnx fp32"] == "" and cells["torch fp32 (reference)"] == "", "only the measured artifact has a device latency"

    verified = json.loads(verify_json.read_text())
    (device,) = verified["device_results"]
    assert device["device_label"] == label and device["file"] == str(bench) and device["artifacts"] == phone["artifacts"]
    row = next(a for a in verified["artifacts"] if a["format"] == "tflite" and a["quant"] == "fp32")
    assert row["sha256"] == measured["sha256"], "verify matches the phone's artifact by its sha256"


# -- privacy: no socket, no torch ---------------------------------------------------------------

GUARD = r"""
import json, sys
events = []
def audit(event, args):
    if event.startswith("socket."):
        events.append(event)
        raise PermissionError(f"network access during a capture: {event}")
sys.addaudithook(audit)
import socket
socket.create_connection = lambda *a, **k: (_ for _ in ()).throw(PermissionError("create_connection"))
report = sys.argv[1]
def write_report(extra):
    json.dump({"socket_events": events, "torch_loaded": "torch" in sys.modules, **extra}, open(report, "w"))
"""

PIPELINE_UNDER_GUARD = (
    GUARD
    + r"""
from PIL import Image
from demo_app.capture import CapturePipeline
from demo_app.presentation import result_view
pipeline = CapturePipeline.load(sys.argv[2], threads=1)
view = result_view(pipeline.run(Image.open(sys.argv[3])))
try:
    socket.socket()
    tripwire = "no error"
except PermissionError as exc:
    tripwire = str(exc)
events.remove("socket.__new__")
write_report({"top": view.rows[0].label, "tripwire": tripwire})
"""
)

APP_UNDER_GUARD = (
    GUARD
    + r"""
import atexit
atexit.register(lambda: write_report({}))
from demo_app.main import main
sys.exit(main(sys.argv[2:]))
"""
)


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_capture_opens_no_socket_and_never_imports_torch(artifacts, lesion, tmp_path, fmt):
    report = tmp_path / "report.json"
    done = subprocess.run(
        [sys.executable, "-c", PIPELINE_UNDER_GUARD, report, artifacts[fmt], lesion[0]],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(report.read_text())
    assert result["tripwire"].startswith("network access during a capture: socket.__new__"), "the guard really blocks sockets"
    assert result["socket_events"] == [] and result["torch_loaded"] is False and result["top"]


def test_the_whole_app_opens_no_socket_and_never_imports_torch(artifacts, lesion, tmp_path, kivy_env):
    report = tmp_path / "report.json"
    args = [
        "--model",
        artifacts["tflite"],
        "--source",
        lesion[0],
        "--capture-and-exit",
        "--screenshot",
        tmp_path / "shot.png",
        "--data-dir",
        tmp_path / "data",
    ]
    done = subprocess.run(
        [sys.executable, "-c", APP_UNDER_GUARD, report, *map(str, args)], env=kivy_env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(report.read_text())
    assert result == {"socket_events": [], "torch_loaded": False}
    assert json.loads(done.stdout)["top3"]


STAGED_CAPTURE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from PIL import Image
import demo_app, edgederm
from demo_app.capture import CapturePipeline
view = CapturePipeline.load(sys.argv[2]).run(Image.open(sys.argv[3]))
print(json.dumps({"edgederm": edgederm.__file__, "demo_app": demo_app.__file__, "torch": "torch" in sys.modules, "top": view.screening.top[0][0]}))
"""


def test_staged_mobile_sources_run_a_capture_on_their_own(artifacts, lesion, tmp_path):
    """The folder buildozer / kivy-ios package holds main.py, the app and its own copy of edgederm's runtime."""
    from demo_app.stage_mobile import stage

    out = stage(tmp_path / "mobile_src")
    assert (out / "main.py").is_file() and (out / "edgederm" / "core" / "metadata.py").is_file()
    assert not (out / "edgederm" / "converters").exists(), "the phone needs the runtime, not the converters"
    done = subprocess.run(
        [sys.executable, "-c", STAGED_CAPTURE, out, artifacts["tflite"], lesion[0]],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["edgederm"].startswith(str(out)) and report["demo_app"].startswith(str(out))
    assert report["torch"] is False and report["top"]


# -- the app end to end -------------------------------------------------------------------------


def _run_app(args: list, env: dict[str, str], timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "demo_app", *map(str, args)], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def _assert_not_blank(path: Path, size=WINDOW) -> np.ndarray:
    assert path.is_file(), f"no screenshot at {path}"
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape == (size[1], size[0], 3)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200, "the screenshot is blank"
    return pixels


@pytest.mark.parametrize("fmt", ["tflite", "onnx"])
def test_capture_and_exit_end_to_end(artifacts, lesion, tmp_path, kivy_env, fmt):
    shot, data = tmp_path / "shot.png", tmp_path / "data"
    started = time.perf_counter()
    done = _run_app(
        ["--model", artifacts[fmt], "--source", lesion[0], "--capture-and-exit", "--screenshot", shot, "--data-dir", data], kivy_env
    )
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == "", "a successful run writes nothing on stderr"
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    shown = json.loads(lines[0])
    assert {"top3", "refer", "reason", "lesion_area_fraction", "latency_ms"} <= set(shown)
    assert len(shown["top3"]) == 3 and all({"label", "name", "probability"} == set(row) for row in shown["top3"])
    probs = [row["probability"] for row in shown["top3"]]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001
    assert isinstance(shown["refer"], bool) and shown["reason"] and shown["banner"] == (REFER_TITLE if shown["refer"] else NO_REFER_TITLE)
    assert shown["lesion_area_fraction"] is None and shown["segmenter"] is None
    assert 0 < shown["latency_ms"] < 10_000 and shown["screenshot"] == str(shot) and shown["source"] == str(lesion[0])

    same = CapturePipeline.load(artifacts[fmt]).run(Image.open(lesion[0]))
    assert [row["label"] for row in shown["top3"]] == [code for code, _, _ in same.screening.top]
    assert shown["refer"] == same.screening.refer and shown["reason"] == same.screening.reason

    pixels = _assert_not_blank(shot)
    banner = pixels[20:80, 20:460].reshape(-1, 3).mean(axis=0)
    if shown["refer"]:
        assert banner[0] > 150 and banner[1] < 80, f"the refer banner is not red: {banner}"
    else:
        assert banner[1] > banner[0], f"the no-referral banner is not green: {banner}"
    history = HistoryStore(data / "history").list()
    assert len(history) == 1 and history[0].top3 == shown["top3"], "the capture is stored in the on-device history"
    assert seconds < 60


def test_capture_and_exit_uses_the_zoo_default(lesion, tmp_path, kivy_env):
    """A fresh install screens with the shipped int8 TFLite classifier and segmenter: nothing to train or choose."""
    from demo_app.settings_store import DEFAULT_MODEL, DEFAULT_SEGMENTER
    from edgederm.core import zoo

    done = _run_app(["--source", lesion[0], "--capture-and-exit", "--data-dir", tmp_path / "data"], kivy_env)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = json.loads(done.stdout.splitlines()[-1])
    classifier, segmenter = zoo.phone_artifact(DEFAULT_MODEL), zoo.phone_artifact(DEFAULT_SEGMENTER)
    assert shown["model"] == str(classifier) and shown["segmenter"] == str(segmenter)
    assert shown["lesion_area_fraction"] is not None and 0 < shown["lesion_area_fraction"] < 1
    same = CapturePipeline.load(classifier, segmenter).run(Image.open(lesion[0]))
    assert shown["predicted"] == same.screening.predicted


def test_capture_and_exit_from_a_folder(artifacts, lesion, tmp_path, kivy_env):
    folder = tmp_path / "stills"
    folder.mkdir()
    Image.open(lesion[0]).save(folder / "b.png")
    Image.open(lesion[0]).rotate(90, expand=True).save(folder / "a.jpg")
    done = _run_app(
        ["--model", artifacts["tflite"], "--threads", "2", "--source", folder, "--capture-and-exit", "--data-dir", tmp_path / "data"],
        kivy_env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shown = json.loads(done.stdout)
    assert shown["source"] == str(folder / "a.jpg") and shown["threads"] == 2 and shown["screenshot"] is None


def _predictions_csv(model: Path, image: Path, out: Path) -> dict[str, str]:
    """``edgederm predict MODEL IMAGE``: the one row of its predictions.csv."""
    done = subprocess.run(
        [sys.executable, "-m", "edgederm", "predict", model, image, "--out", out, "--quiet"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader((out / "predictions.csv").open(encoding="utf-8")))
    assert len(rows) == 1 and rows[0]["error"] == "", rows
    return rows[0]


def test_capture_matches_edgederm_predict(artifacts, segmenter_artifact, lesion, tmp_path, kivy_env):
    """The app's answer is the CLI's answer on the same photo and artifacts.

    The app classifies the whole photo and runs the segmenter beside it only to outline the lesion
    (capture.py), so the like-for-like CLI runs are plain ``edgederm predict CLS`` and ``edgederm
    predict SEG``, not ``predict --segmenter --classifier``, which classifies a crop around the lesion.
    """
    classifier = artifacts["tflite"]
    done = _run_app(
        [
            "--model",
            classifier,
            "--segmenter",
            segmenter_artifact,
            "--source",
            lesion[0],
            "--capture-and-exit",
            "--data-dir",
            tmp_path / "d",
        ],
        kivy_env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shown = json.loads(done.stdout)
    assert shown["model"] == str(classifier) and shown["segmenter"] == str(segmenter_artifact)

    cli = _predictions_csv(classifier, lesion[0], tmp_path / "cls")
    class_names = list(cli)[2:-2]  # image, label, one column per class code, predicted, error
    assert class_names == CapturePipeline.load(classifier).classifier.spec.class_names
    cli_probs = {code: float(cli[code]) for code in class_names}
    cli_top3 = sorted(cli_probs, key=cli_probs.get, reverse=True)[:3]
    assert [row["label"] for row in shown["top3"]] == cli_top3
    for row in shown["top3"]:
        assert row["probability"] == pytest.approx(cli_probs[row["label"]], abs=1e-4), row["label"]
    assert shown["predicted"] == cli["predicted"]

    segmented = _predictions_csv(segmenter_artifact, lesion[0], tmp_path / "seg")
    assert 0 < float(segmented["lesion_area_fraction"]) < 1, "the segmenter outlines part of the photo"
    assert shown["lesion_area_fraction"] == pytest.approx(float(segmented["lesion_area_fraction"]), abs=1e-5)
    cli_mask = np.asarray(Image.open(tmp_path / "seg" / segmented["mask"]))
    stored = HistoryStore(tmp_path / "d" / "history").list()[0]
    assert stored.lesion_area_fraction == pytest.approx((cli_mask >= 128).mean(), abs=1e-6)


@pytest.fixture(scope="module")
def ruled_artifact(trained_run: Path, lesion, tmp_path_factory) -> Path:
    """The session's classifier with a decision rule that names another class than the most probable one on ``lesion``.

    The offsets are what ``edgederm decision`` stores (added to log-probabilities); here they lift the
    second most probable class above the first on the fixture photo, so argmax and the rule disagree.
    """
    from edgederm.runtime import Predictor

    run = tmp_path_factory.mktemp("demo_app_rule") / "run"
    shutil.copytree(trained_run, run)
    probs = Predictor.load(run).predict_image(Image.open(lesion[0]).convert("RGB"))
    first, second = np.argsort(-probs)[:2]
    offsets = [0.0] * len(probs)
    offsets[second] = float(np.log(probs[first] / probs[second])) + 1.0
    spec = json.loads((run / "spec.json").read_text())
    spec["decision"] = {"rule": "balanced", "offsets": offsets}
    (run / "spec.json").write_text(json.dumps(spec, indent=2))
    records = export_run(run, [FORMATS["onnx"]], ["fp32"], run.parent / "export")
    assert all(r.status == "ok" for r in records), [(r.path, r.message) for r in records]
    return run.parent / "export" / records[0].path


def test_capture_names_the_class_edgederm_predict_names(ruled_artifact, lesion, tmp_path, kivy_env):
    """The app and `edgederm predict` name the same class under the model's decision rule, not the argmax."""
    done = _run_app(["--model", ruled_artifact, "--source", lesion[0], "--capture-and-exit", "--data-dir", tmp_path / "d"], kivy_env)
    assert done.returncode == 0, done.stderr[-2000:]
    shown = json.loads(done.stdout)
    cli = _predictions_csv(ruled_artifact, lesion[0], tmp_path / "cls")
    assert shown["predicted"] == cli["predicted"]
    assert shown["predicted"] != shown["top3"][0]["label"], "the fixture's rule must name another class than the argmax"
    stored = HistoryStore(tmp_path / "d" / "history").list()[0]
    assert stored.predicted == cli["predicted"] and stored.summary.split(" - ")[1].startswith(shown["predicted_name"])


# Drives the real app in a subprocess (Kivy rewires the logging of the process that imports it): the
# test's steps run one after another, each followed by a few drawn frames; ``report`` is printed at the end.
APP_DRIVER = r"""
import json, sys
from pathlib import Path
from demo_app.main import launch_options, parse_args, prepare_kivy_environment

options = launch_options(parse_args(json.loads(sys.argv[1])))
prepare_kivy_environment(options)
from kivy.clock import Clock
from kivy.core.window import Window
from kivy.uix.button import Button
from kivy.uix.label import Label
from kivy.uix.popup import Popup
from demo_app.ui.app import EdgedermScreeningApp, save_screenshot

app = EdgedermScreeningApp(options)
report = {}

def screen(name):
    return app.screens.get_screen(name)

def labels(widget):
    return [w.text for w in widget.walk(restrict=True) if isinstance(w, Label) and not isinstance(w, Button)]

def press(widget, text):
    next(w for w in widget.walk(restrict=True) if isinstance(w, Button) and w.text == text).dispatch("on_press")

def choose_file(path):
    # What a person does in the file chooser: select the photo, press Open.
    popup = next(w for w in Window.children if isinstance(w, Popup))
    popup.content.children[-1].selection = [str(path)]
    press(popup, "Open")

def _step(steps, index, waited):
    if index == len(steps):
        app.stop()
        return
    if waited == 0:
        steps[index]()
    if waited < 6:
        Clock.schedule_once(lambda _dt: drive(steps, index, waited + 1), 0.05)
    else:
        drive(steps, index + 1, 0)

def drive(steps, index=0, waited=0):
    try:
        _step(steps, index, waited)
    except BaseException as exc:
        app.failure = exc
        app.stop()

def run(steps):
    app.preflight()
    Clock.schedule_once(lambda _dt: drive(steps), 0)
    app.run()
    if app.failure:
        raise app.failure
    print(json.dumps(report))
"""


def _drive_app(steps: str, argv: list, env: dict[str, str], *extra) -> tuple[dict, subprocess.CompletedProcess]:
    done = subprocess.run(
        [sys.executable, "-c", APP_DRIVER + steps, json.dumps([str(a) for a in argv]), *map(str, extra)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done


HISTORY_AFTER_RESTART = r"""
def record():
    history = screen("history")
    report["status"] = history.status.text
    report["rows"] = labels(history.list)
    report["entries"] = [{"id": e.id, "top3": e.top3, "photo": str(e.photo), "created": e.created} for e in app.history.list()]

run([
    app.accept_notice,
    lambda: press(screen("camera"), "Capture"),
    lambda: app.go("history"),
    record,
])
"""


def test_history_survives_a_restart(artifacts, lesion, tmp_path, kivy_env):
    data = tmp_path / "data"
    first = _run_app(["--model", artifacts["tflite"], "--source", lesion[0], "--capture-and-exit", "--data-dir", data], kivy_env)
    assert first.returncode == 0, first.stderr[-2000:]
    earlier = json.loads(first.stdout)

    rotated = tmp_path / "rotated.png"
    Image.open(lesion[0]).rotate(90, expand=True).save(rotated)
    report, _ = _drive_app(HISTORY_AFTER_RESTART, ["--model", artifacts["onnx"], "--source", rotated, "--data-dir", data], kivy_env)
    entries = report["entries"]
    assert len(entries) == 2 and entries[0]["id"] > entries[1]["id"], "the restarted app adds to the history, newest first"
    assert entries[1]["top3"] == earlier["top3"], "the earlier capture is still there, as it was shown"
    assert Path(entries[1]["photo"]).is_file()
    assert report["status"].startswith("2 capture(s). Stored in ") and report["status"].endswith(str(data / "history"))
    top = earlier["top3"][0]
    assert any(f"{top['name']} {top['probability']:.0%}" in row and artifacts["tflite"].name in row for row in report["rows"]), report[
        "rows"
    ]
    assert sum(artifacts["onnx"].name in row for row in report["rows"]) == 1, "the new capture is listed too"


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda a, img, tmp: ["--model", tmp / "missing.tflite", "--source", img], "no such model file"),
        (lambda a, img, tmp: ["--model", _truncated(a["tflite"], tmp), "--source", img], "not a valid TFLite model"),
        (lambda a, img, tmp: ["--model", img, "--source", img], "unsupported model format"),
        (lambda a, img, tmp: ["--model", a["tflite"], "--source", _not_an_image(tmp)], "not a JPEG, PNG"),
        (lambda a, img, tmp: ["--model", a["tflite"], "--source", tmp / "missing.jpg"], "no such image or folder"),
        (lambda a, img, tmp: ["--model", a["tflite"], "--source", corrupt_jpeg(tmp / "cut.jpg")], "truncated"),
        (lambda a, img, tmp: ["--model", a["tflite"], "--source", img, "--threads", "0"], "--threads must be >= 1"),
        (lambda a, img, tmp: ["--model", "zoo:no-such-entry", "--source", img], "no zoo entry 'no-such-entry'"),
    ],
    ids=[
        "missing-model",
        "truncated-model",
        "image-as-model",
        "not-an-image",
        "missing-image",
        "truncated-jpeg",
        "zero-threads",
        "unknown-zoo-entry",
    ],
)
def test_bad_input_fails_with_one_line(artifacts, lesion, tmp_path, make_args, message):
    """These fail before a window opens, so they need no display."""
    args = [
        *make_args(artifacts, lesion[0], tmp_path),
        "--capture-and-exit",
        "--screenshot",
        tmp_path / "shot.png",
        "--data-dir",
        tmp_path / "data",
    ]
    done = _run_app(args, cli_env())
    assert done.returncode != 0 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr and message in lines[0], done.stderr
    assert not (tmp_path / "shot.png").exists()


def test_camera_source_without_a_camera_fails_with_one_line(artifacts, tmp_path, kivy_env):
    done = _run_app(["--model", artifacts["tflite"], "--source", "camera", "--capture-and-exit", "--data-dir", tmp_path / "data"], kivy_env)
    assert done.returncode != 0 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no camera frame to capture" in lines[0] and "Traceback" not in done.stderr


def _truncated(path: Path, folder: Path) -> Path:
    cut = folder / "cut.tflite"
    cut.write_bytes(path.read_bytes()[:5000])
    return cut


def _not_an_image(folder: Path) -> Path:
    fake = folder / "fake.jpg"
    fake.write_text("this is not a photo")
    return fake


# -- every screen draws -------------------------------------------------------------------------

TOUR = r"""
import json, sys
from pathlib import Path
import numpy as np
from PIL import Image
from demo_app.main import launch_options, parse_args, prepare_kivy_environment

model, source, mask_path, data, out = sys.argv[1:6]
options = launch_options(parse_args(["--model", model, "--source", source, "--data-dir", data, "--runs", "2", "--warmup", "1"]))
prepare_kivy_environment(options)
from kivy.clock import Clock
from demo_app.ui.app import EdgedermScreeningApp, save_screenshot
from edgederm.core.preprocess import Preprocess
from edgederm.core.spec import ModelSpec

class StandInSegmenter:
    # What Predictor.predict_mask will return: the synthetic photo's exact mask, at the photo's size.
    path = Path("stand-in-segmenter")
    spec = ModelSpec(task="segmentation", arch="stand-in", class_names=["lesion"], preprocess=Preprocess(input_size=64), output="mask_probabilities")
    def predict_mask(self, image):
        return np.asarray(Image.open(mask_path).resize(image.size, Image.NEAREST))

app = EdgedermScreeningApp(options)
app.preflight()
app.pipeline.segmenter = StandInSegmenter()
shots = {}

def camera_without_camera():
    camera = app.screens.get_screen("camera")
    camera.preview_area.clear_widgets()
    camera.preview = None
    app.source = "camera"
    app.go("history")
    app.go("camera")

def benchmark():
    screen = app.screens.get_screen("benchmark")
    screen.start()

steps = [
    ("notice", lambda: None),
    ("camera", app.accept_notice),
    ("result", lambda: app.screens.get_screen("camera").capture()),
    ("history", lambda: (app.go("camera"), app.screens.get_screen("camera").capture(), app.go("history"))),
    ("settings", lambda: app.go("settings")),
    ("benchmark", lambda: (app.go("benchmark"), benchmark())),
    ("no_camera", camera_without_camera),
    ("import", lambda: app.screens.get_screen("camera").import_photo()),
]


def open_popup():
    from kivy.core.window import Window
    from kivy.uix.popup import Popup

    return next(w for w in Window.children if isinstance(w, Popup))


def choose_the_photo():
    # What a person does in the file chooser: select the photo, press Open.
    popup = open_popup()
    chooser, buttons = popup.content.children[-1], popup.content.children[0]
    chooser.selection = [source]
    buttons.children[-1].dispatch("on_press")

def run(index=0, waited=0):
    if index == len(steps):
        app.stop()
        return
    name, action = steps[index]
    if waited == 0:
        action()
    if waited < 8 or (name == "benchmark" and app.screens.get_screen("benchmark").result is None and waited < 400):
        Clock.schedule_once(lambda _dt: run(index, waited + 1), 0.05)
        return
    target = open_popup() if name == "import" else app.screens
    shots[name] = str(save_screenshot(target, Path(out) / f"{name}.png"))
    if name == "import":
        choose_the_photo()
    run(index + 1)

def guarded(_dt):
    try:
        run()
    except BaseException as exc:
        app.failure = exc
        app.stop()

Clock.schedule_once(guarded, 0)
app.run()
if app.failure:
    raise app.failure
print(json.dumps({
    "shots": shots,
    "history": len(app.history.list()),
    "accepted": json.loads((Path(data) / "settings.json").read_text())["accepted_notice"],
    "camera_message": app.screens.get_screen("camera").unavailable_reason,
    "benchmark": app.screens.get_screen("benchmark").result["artifacts"][0]["latency"][0]["runs"],
    "status": app.screens.get_screen("camera").status.text,
    "screen": app.screens.current,
}))
"""


def test_every_screen_draws(artifacts, lesion, tmp_path, kivy_env):
    """Notice, camera (stills), result with a lesion outline, history, settings, benchmark, no-camera fallback, photo import."""
    out = tmp_path / "screens"
    args = [artifacts["tflite"], lesion[0], lesion[1], tmp_path / "data", out]
    done = subprocess.run(
        [sys.executable, "-c", TOUR, *map(str, args)], cwd=REPO, env=kivy_env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(report["shots"]) == {"notice", "camera", "result", "history", "settings", "benchmark", "no_camera", "import"}
    for name in set(report["shots"]) - {"import"}:
        _assert_not_blank(out / f"{name}.png")
    assert Image.open(out / "import.png").convert("L").getextrema()[1] > 100, "the file chooser popup is drawn"
    assert report["history"] == 3 and report["screen"] == "result", "the imported photo was analysed and stored"
    assert report["accepted"] is True and report["benchmark"] == 2
    assert "No camera found" in report["camera_message"]
    assert "stand-in-segmenter" in report["status"]
    result = np.asarray(Image.open(out / "result.png").convert("RGB"))
    assert ((result == (255, 214, 0)).all(axis=-1)).sum() > 50, "the lesion outline (yellow) is drawn over the photo"


CORRUPT_IMPORT = r"""
corrupt, good = sys.argv[2:4]

def after_corrupt():
    report["status"] = screen("camera").status.text
    report["screen"] = app.screens.current
    report["history"] = len(app.history.list())

def after_good():
    report["screen_after_good"] = app.screens.current
    report["history_after_good"] = len(app.history.list())

run([
    app.accept_notice,
    lambda: press(screen("camera"), "Import a photo instead"),
    lambda: choose_file(corrupt),
    after_corrupt,
    lambda: press(screen("camera"), "Import a photo instead"),
    lambda: choose_file(good),
    after_good,
])
"""


def test_a_corrupt_imported_photo_gives_a_message_not_a_crash(artifacts, lesion, tmp_path, kivy_env):
    corrupt = corrupt_jpeg(tmp_path / "cut.jpg")
    with pytest.raises(ImageError) as expected:
        load_image(corrupt)
    report, _ = _drive_app(  # exits 0 with no traceback: the app ran on until the script stopped it
        CORRUPT_IMPORT,
        ["--model", artifacts["tflite"], "--source", lesion[0], "--data-dir", tmp_path / "data"],
        kivy_env,
        corrupt,
        lesion[0],
    )
    assert report["status"] == str(expected.value) and "\n" not in report["status"], "the loader's one-line message is shown"
    assert str(corrupt) in report["status"] and "truncated" in report["status"]
    assert report["screen"] == "camera" and report["history"] == 0, "nothing is analysed or stored"
    assert report["screen_after_good"] == "result" and report["history_after_good"] == 1, "the app keeps working"


CAMERA_REFUSED = r"""
import types
import demo_app.ui.camera as camera_module

# Android's runtime permission dialog, answered "Deny".
asked = []
permissions = types.ModuleType("android.permissions")
permissions.Permission = types.SimpleNamespace(CAMERA="android.permission.CAMERA")
permissions.check_permission = lambda permission: False
permissions.request_permissions = lambda wanted, callback: (asked.append(wanted), callback(wanted, [False] * len(wanted)))
sys.modules["android"] = types.ModuleType("android")
sys.modules["android.permissions"] = permissions
camera_module.platform = "android"
out = Path(sys.argv[2])

def refused():
    camera = screen("camera")
    report["asked"] = asked
    report["reason"] = camera.unavailable_reason
    report["capture_disabled"] = camera.capture_button.disabled
    report["offer"] = labels(camera.preview_area)
    report["shot"] = str(save_screenshot(app.screens, out))

def picker_open():
    report["picker"] = any(isinstance(w, Popup) for w in Window.children)

def after_import():
    report["screen"] = app.screens.current
    report["history"] = len(app.history.list())

run([
    app.accept_notice,
    refused,
    lambda: press(screen("camera").preview_area, "Import a photo"),
    picker_open,
    lambda: choose_file(sys.argv[3]),
    after_import,
])
"""


def test_camera_permission_refused_offers_the_import(artifacts, lesion, tmp_path, kivy_env):
    shot = tmp_path / "refused.png"
    report, _ = _drive_app(
        CAMERA_REFUSED, ["--model", artifacts["tflite"], "--source", "camera", "--data-dir", tmp_path / "data"], kivy_env, shot, lesion[0]
    )
    assert report["asked"] == [["android.permission.CAMERA"]], "the app asked for the camera permission"
    assert report["reason"] == "Camera permission was refused." and report["capture_disabled"] is True
    assert any("Camera permission was refused." in text and "import a photo from the gallery or files" in text for text in report["offer"])
    _assert_not_blank(shot)
    assert report["picker"] is True, "the offer's button opens the photo picker"
    assert report["screen"] == "result" and report["history"] == 1, "the imported photo is analysed"
