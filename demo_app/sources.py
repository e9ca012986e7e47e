"""Where frames come from: the camera (in the Kivy layer) or stills replayed as if they were camera frames."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from edgederm.core.errors import UsageError
from edgederm.data.images import is_image_file, load_image

CAMERA = "camera"
CAMERA_RESOLUTION = (640, 480)  # what the live preview asks the camera for: the size of a captured frame


class StillFrames:
    """An image file, or a folder of them, shown one after another like a camera preview."""

    def __init__(self, source: str | Path):
        self.source = Path(source)
        self.paths = still_paths(self.source)
        self.index = 0

    @property
    def current_path(self) -> Path:
        return self.paths[self.index]

    def current(self) -> Image.Image:
        """The frame on screen now, decoded safely (EXIF orientation applied, RGB)."""
        return load_image(self.current_path)

    def advance(self) -> Path:
        self.index = (self.index + 1) % len(self.paths)
        return self.current_path


def still_paths(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.is_file() and is_image_file(p))
        if not paths:
            raise UsageError("no images in this folder", fix="give a folder of .jpg/.png photos", path=source)
        return paths
    raise UsageError("no such image or folder", path=source, fix="give --source camera, an image file or a folder of images")


def texture_to_image(pixels: bytes, size: tuple[int, int], *, colorfmt: str = "rgba", bottom_row_first: bool = True) -> Image.Image:
    """A Kivy texture's pixel bytes as an upright RGB photo.

    OpenGL textures store rows bottom-up unless the provider flipped the texture's coordinates,
    which the caller reads from ``texture.tex_coords`` (see ``ui.camera.frame_from_texture``).
    """
    mode = {"rgba": "RGBA", "rgb": "RGB", "bgra": "RGBA", "bgr": "RGB"}[colorfmt]
    image = Image.frombytes(mode, tuple(size), bytes(pixels))
    if colorfmt.startswith("bgr"):
        channels = image.split()
        image = Image.merge(mode, (channels[2], channels[1], channels[0], *channels[3:]))
    if bottom_row_first:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    return image.convert("RGB")
