"""Import a photo when there is no camera: plyer's system picker on Android when installed, else Kivy's FileChooser."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kivy.metrics import dp
from kivy.uix.boxlayout import BoxLayout
from kivy.uix.filechooser import FileChooserListView
from kivy.uix.popup import Popup
from kivy.utils import platform

from edgederm.data.images import IMAGE_SUFFIXES

from .widgets import button, button_row

PATTERNS = sorted({f"*{suffix}" for suffix in IMAGE_SUFFIXES} | {f"*{suffix.upper()}" for suffix in IMAGE_SUFFIXES})


def pick_image(on_chosen: Callable[[Path], None], *, start: Path | None = None) -> None:
    if platform == "android" and _system_picker(on_chosen):
        return
    pick_file(on_chosen, patterns=PATTERNS, title="Import a photo", start=start)


def pick_file(
    on_chosen: Callable[[Path], None], *, patterns: list[str], title: str, start: Path | None = None, dirselect: bool = False
) -> None:
    chooser = FileChooserListView(path=str(start or Path.home()), filters=patterns, dirselect=dirselect)
    content = BoxLayout(orientation="vertical", spacing=dp(8))
    content.add_widget(chooser)
    popup = Popup(title=title, content=content, size_hint=(0.95, 0.9))

    def choose() -> None:
        if chooser.selection:
            popup.dismiss()
            on_chosen(Path(chooser.selection[0]))

    content.add_widget(button_row(button("Open", choose), button("Cancel", popup.dismiss, color=(0.3, 0.3, 0.33, 1))))
    popup.open()


def _system_picker(on_chosen: Callable[[Path], None]) -> bool:
    try:
        from plyer import filechooser  # type: ignore[import-not-found]
    except ImportError:
        return False
    from kivy.clock import Clock

    def chosen(selection) -> None:
        if selection:
            Clock.schedule_once(lambda _dt: on_chosen(Path(selection[0])))

    filechooser.open_file(on_selection=chosen, filters=[["Images", *PATTERNS]])
    return True
