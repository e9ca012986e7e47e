"""Small Kivy building blocks shared by the screens: coloured boxes, wrapped labels, PIL -> texture."""

from __future__ import annotations

from kivy.graphics import Color, Rectangle
from kivy.graphics.texture import Texture
from kivy.metrics import dp, sp
from kivy.properties import BoundedNumericProperty
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.button import Button
from kivy.uix.label import Label
from PIL import Image

INK = (0.93, 0.94, 0.95, 1)
MUTED = (0.68, 0.71, 0.75, 1)
BACKGROUND = (0.09, 0.1, 0.12, 1)
PANEL = (0.15, 0.16, 0.19, 1)
REFER_RED = (0.78, 0.11, 0.13, 1)
CALM_GREEN = (0.13, 0.42, 0.3, 1)
ACCENT = (0.16, 0.44, 0.78, 1)


class Panel(BoxLayout):
    """A BoxLayout with a solid background colour."""

    def __init__(self, color=PANEL, **kwargs):
        super().__init__(**kwargs)
        with self.canvas.before:
            self._color = Color(*color)
            self._rect = Rectangle(pos=self.pos, size=self.size)
        self.bind(pos=self._redraw, size=self._redraw)

    def set_color(self, color) -> None:
        self._color.rgba = color

    def _redraw(self, *_):
        self._rect.pos, self._rect.size = self.pos, self.size


class Text(Label):
    """A label that wraps to its width and grows to its text's height."""

    def __init__(self, text: str = "", size: float = 15, color=INK, bold: bool = False, halign: str = "left", **kwargs):
        super().__init__(text=text, font_size=sp(size), color=color, bold=bold, halign=halign, valign="middle", size_hint_y=None, **kwargs)
        self.bind(width=lambda *_: setattr(self, "text_size", (self.width, None)))
        self.bind(texture_size=lambda *_: setattr(self, "height", self.texture_size[1] + dp(4)))


def button(text: str, on_press, *, color=ACCENT, height: float = 48, **kwargs) -> Button:
    widget = Button(
        text=text,
        font_size=sp(16),
        size_hint_y=None,
        height=dp(height),
        background_normal="",
        background_color=color,
        **kwargs,
    )
    widget.bind(on_press=lambda *_: on_press())
    return widget


def button_row(*buttons: Button, height: float = 48) -> BoxLayout:
    row = BoxLayout(orientation="horizontal", size_hint_y=None, height=dp(height), spacing=dp(8))
    for item in buttons:
        row.add_widget(item)
    return row


def texture_from_image(image: Image.Image, reuse: Texture | None = None) -> Texture:
    """An upright RGBA texture of a PIL image (RGBA keeps rows 4-byte aligned for any width).

    ``reuse``: a texture this function made earlier; filled in place when it has the image's size
    (no new GPU texture per capture), else a new one is made.
    """
    rgba = image if image.mode == "RGBA" else image.convert("RGBA")
    flipped = reuse is not None and reuse.tex_coords[1] > reuse.tex_coords[7]  # v of the bottom-left corner > v of the top-left
    if flipped and tuple(reuse.size) == rgba.size and reuse.colorfmt == "rgba":
        texture = reuse
    else:
        texture = Texture.create(size=rgba.size, colorfmt="rgba")
        texture.flip_vertical()  # PIL rows run top-down, OpenGL's bottom-up
    texture.blit_buffer(rgba.tobytes(), colorfmt="rgba", bufferfmt="ubyte")
    return texture


class ProbabilityBar(BoxLayout):
    """A thin horizontal bar filled to ``value`` (0..1)."""

    value = BoundedNumericProperty(0.0, min=0.0, max=1.0, errorhandler=lambda v: max(0.0, min(1.0, float(v))))

    def __init__(self, value: float, color=ACCENT, **kwargs):
        super().__init__(size_hint_y=None, height=dp(8), **kwargs)
        self.value = value
        with self.canvas:
            Color(*PANEL)
            self._track = Rectangle()
            Color(*color)
            self._fill = Rectangle()
        self.bind(pos=self._redraw, size=self._redraw, value=self._redraw)

    def _redraw(self, *_):
        self._track.pos, self._track.size = self.pos, self.size
        self._fill.pos, self._fill.size = self.pos, (self.width * self.value, self.height)
