"""Sample and SampleSet: what every dataset layout is read into."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from ..core.errors import DataError
from .images import load_image, load_mask

if TYPE_CHECKING:
    from .synthetic import SyntheticItem

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    image_id: str
    label: str | None
    group: str
    image_path: Path | None = None
    mask_path: Path | None = None
    split: str | None = None
    synthetic: SyntheticItem | None = None
    source: str | None = None  # the data spec it came from, where a run joins several (--extra-train)

    @property
    def has_mask(self) -> bool:
        return self.mask_path is not None or self.synthetic is not None

    def load_image(self) -> Image.Image:
        if self.synthetic is not None:
            from .synthetic import render_synthetic

            return render_synthetic(self.synthetic)[0]
        assert self.image_path is not None
        return load_image(self.image_path)

    def load_mask(self, expected_size: tuple[int, int] | None = None) -> np.ndarray | None:
        if self.synthetic is not None:
            from .synthetic import render_synthetic

            return render_synthetic(self.synthetic)[1]
        if self.mask_path is None:
            return None
        return load_mask(self.mask_path, expected_size=expected_size)

    def load_image_and_mask(self) -> tuple[Image.Image, np.ndarray | None]:
        """The image and its mask (None when it has none); a synthetic sample is rendered once."""
        if self.synthetic is not None:
            from .synthetic import render_synthetic

            return render_synthetic(self.synthetic)
        image = self.load_image()
        return image, self.load_mask(expected_size=image.size)

    @property
    def display_path(self) -> str:
        return str(self.image_path) if self.image_path is not None else self.image_id


@dataclass
class SampleSet:
    """The samples of one ``--data`` spec, in a stable order."""

    spec: str
    samples: list[Sample]
    root: Path | None = None
    notes: list[str] = field(default_factory=list)  # warnings met while reading the layout

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    @property
    def labels(self) -> list[str | None]:
        return [s.label for s in self.samples]

    @property
    def groups(self) -> list[str]:
        return [s.group for s in self.samples]

    @property
    def is_labelled(self) -> bool:
        return all(s.label is not None for s in self.samples)

    def class_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(s.label for s in self.samples if s.label is not None).items()))

    def subset(self, indices: Sequence[int], spec_suffix: str = "") -> SampleSet:
        return SampleSet(self.spec + spec_suffix, [self.samples[i] for i in indices], self.root, self.notes)

    def with_splits(self, splits: Sequence[str]) -> SampleSet:
        samples = [replace(s, split=sp) for s, sp in zip(self.samples, splits, strict=True)]
        return SampleSet(self.spec, samples, self.root, self.notes)

    def split(self, name: str) -> SampleSet:
        chosen = [i for i, s in enumerate(self.samples) if s.split == name]
        if not chosen:
            raise DataError(
                f"no samples in split {name!r}",
                path=self.spec,
                fix=f"check the split column; known splits here: {sorted({s.split for s in self.samples if s.split})}",
            )
        return self.subset(chosen, f"[{name}]")

    def require_labels(self) -> None:
        missing = [s.display_path for s in self.samples if s.label is None]
        if missing:
            raise DataError(
                f"{len(missing)} samples have no label, e.g. {missing[0]}",
                path=self.spec,
                fix="training and evaluation need a label for every image",
            )

    def require_masks(self) -> None:
        """One line naming the data and the fix when any image lacks a lesion mask (segmentation needs them all)."""
        missing = [s.display_path for s in self.samples if not s.has_mask]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(self.samples)} images have no lesion mask (e.g. {missing[0]}); segmentation needs one per image",
                path=self.spec,
                fix="add DIR/masks/<image_id>_segmentation.png (ham10000:, isic2017:) or a mask column (manifest:), or use synthetic:N",
            )

    def summary(self) -> dict[str, Any]:
        by_split: dict[str, dict[str, int]] = {}
        for s in self.samples:
            counts = by_split.setdefault(s.split or "all", {})
            counts[s.label or "?"] = counts.get(s.label or "?", 0) + 1
        return {
            "spec": self.spec,
            "images": len(self.samples),
            "groups": len(set(self.groups)),
            "classes": self.class_counts(),
            "splits": {k: dict(sorted(v.items())) for k, v in sorted(by_split.items())},
        }
