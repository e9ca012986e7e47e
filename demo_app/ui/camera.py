"""The live preview: Kivy's Camera provider, or stills replayed as frames; plus the camera permission on Android."""

from __future__ import annotations

from collections.abc import Callable

from kivy.clock import Clock
from kivy.uix.floatlayout import FloatLayout
from kivy.uix.image import Image as KivyImage
from kivy.utils import platform
from PIL import Image

from ..sources import CAMERA, CAMERA_RESOLUTION, StillFrames, texture_to_image
from .widgets import texture_from_image

STILL_INTERVAL_S = 2.5  # a folder of stills advances like a slow camera
FIRST_FRAME_TIMEOUT_S = 6.0


def request_camera_permission(done: Callable[[bool], None]) -> None:
    """Android asks the user at run time; other platforms grant at install or through the OS."""
    if platform != "android":
        done(True)
        return
    from android.permissions import Permission, check_permission, request_permissions  # type: ignore[import-not-found]

    if check_permission(Permission.CAMERA):
        done(True)
        return
    request_permissions([Permission.CAMERA], lambda _perms, grants: Clock.schedule_once(lambda _dt: done(all(grants))))


def frame_from_texture(texture) -> Image.Image:
    coords = texture.tex_coords  # (u, v) of bottom-left, bottom-right, top-right, top-left
    return texture_to_image(texture.pixels, texture.size, colorfmt="rgba", bottom_row_first=coords[1] < coords[7])


class Preview(FloatLayout):
    """Shows what the camera sees (or the current still) and hands out the frame on screen.

    ``on_unavailable(reason)`` is called once when there is no camera, the camera permission is
    refused or no frame arrives: the screen then offers to import a photo instead.
    """

    def __init__(self, source: str, on_unavailable: Callable[[str], None], **kwargs):
        super().__init__(**kwargs)
        self.source = source
        self.on_unavailable = on_unavailable
        self.camera = None
        self.stills: StillFrames | None = None
        self.view = KivyImage(fit_mode="contain", size_hint=(1, 1), pos_hint={"x": 0, "y": 0})
        self.add_widget(self.view)
        self._events: list = []

    @property
    def is_camera(self) -> bool:
        return self.source == CAMERA

    def start(self) -> None:
        if self.is_camera:
            request_camera_permission(self._start_camera)
        else:
            if self.stills is None:
                self.stills = StillFrames(self.source)
            self._show_still()
            if len(self.stills.paths) > 1:
                self._events.append(Clock.schedule_interval(self._next_still, STILL_INTERVAL_S))

    def stop(self) -> None:
        for event in self._events:
            event.cancel()
        self._events.clear()
        if self.camera is not None:
            self.camera.play = False

    def ready(self) -> bool:
        if self.is_camera:
            return self.camera is not None and self.camera.texture is not None
        return self.stills is not None

    def frame(self) -> tuple[Image.Image, str]:
        """(the frame on screen, where it came from)."""
        if not self.is_camera:
            return self.stills.current(), str(self.stills.current_path)
        if not self.ready():
            raise RuntimeError("the camera has not delivered a frame yet")
        return frame_from_texture(self.camera.texture), "camera"

    def _start_camera(self, granted: bool) -> None:
        if not granted:
            self.on_unavailable("Camera permission was refused.")
            return
        from kivy.core.camera import Camera as CameraProvider

        if CameraProvider is None:
            self.on_unavailable("No camera found (no camera provider: on a desktop, install opencv-python or GStreamer).")
            return
        try:
            from kivy.uix.camera import Camera

            self.camera = Camera(play=True, resolution=CAMERA_RESOLUTION, fit_mode="contain", size_hint=(1, 1), pos_hint={"x": 0, "y": 0})
        except Exception as exc:  # noqa: BLE001 - each provider fails its own way when there is no device
            self.on_unavailable(f"No camera could be opened ({type(exc).__name__}: {exc}).")
            return
        self.remove_widget(self.view)
        self.add_widget(self.camera)
        self._events.append(Clock.schedule_once(self._check_first_frame, FIRST_FRAME_TIMEOUT_S))

    def _check_first_frame(self, _dt) -> None:
        if not self.ready():
            self.stop()
            self.on_unavailable("The camera sent no picture.")

    def _show_still(self) -> None:
        self.view.texture = texture_from_image(self.stills.current())

    def _next_still(self, _dt) -> None:
        self.stills.advance()
        try:
            self._show_still()
        except Exception:  # noqa: BLE001 - an unreadable still is skipped in the preview; capture reports it
            pass
