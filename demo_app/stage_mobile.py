"""Lay out the source folder that buildozer (Android) and kivy-ios package: ``python -m demo_app.stage_mobile``.

Both tools want a folder with a ``main.py`` at its top. This copies the app, the edgederm library
(without ``converters/``, which only the export needs) and the artifacts in ``demo_app/models/``
into ``build/mobile_src/``, and writes that ``main.py``. Nothing here imports torch at run time; the
phone only ever imports ``edgederm.core``, ``edgederm.runtime``, ``edgederm.data.images`` and ``edgederm.bench``.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from .settings_store import DEFAULT_MODEL, DEFAULT_SEGMENTER

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "build" / "mobile_src"
MAIN = '''"""Entry point of the packaged app (written by demo_app/stage_mobile.py)."""

import sys

from demo_app.main import main

sys.exit(main([]))
'''
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "screenshot*.png", "buildozer.spec", ".buildozer", "bin")
# The zoo's checkpoints and splits are for training and export; the phone reads each entry's card and TFLite artifact.
_SKIP_ZOO = shutil.ignore_patterns("*.safetensors", "splits.csv", "__pycache__")


def _library_ignore(folder: str, names: list[str]) -> set[str]:
    skipped = _SKIP(folder, names)
    if Path(folder).relative_to(REPO / "edgederm").parts[:1] == ("zoo",):
        skipped |= _SKIP_ZOO(folder, names)
    return skipped


def stage(out: Path = DEFAULT_OUT) -> Path:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copytree(REPO / "edgederm", out / "edgederm", ignore=_library_ignore)
    shutil.copytree(REPO / "demo_app", out / "demo_app", ignore=_SKIP)
    (out / "main.py").write_text(MAIN, encoding="utf-8")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    out = stage(parser.parse_args().out)
    models = sorted(p.name for p in (out / "demo_app" / "models").glob("*")) if (out / "demo_app" / "models").is_dir() else []
    print(
        f"staged {out} (bundled models: {', '.join(models) or 'none'}; the default is the zoo's {DEFAULT_MODEL} with {DEFAULT_SEGMENTER})"
    )


if __name__ == "__main__":
    main()
