"""Segment-then-classify: the crop-box math and `edgederm predict --segmenter SEG --classifier CLS`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from edgederm.cli import main
from edgederm.evaluate.segment_classify import CROP_LESION, CROP_WHOLE_IMAGE, crop_box_for, expand_to_square, lesion_bounding_box


def _mask(h: int, w: int, box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 255
    return mask


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_bounding_box_is_tight_and_exclusive():
    assert lesion_bounding_box(_mask(50, 80, (10, 20, 30, 25))) == (10, 20, 30, 25)
    assert lesion_bounding_box(np.zeros((5, 5), np.uint8)) is None


def test_margin_grows_the_long_side_and_squares_around_the_centre():
    # 20x10 box centred at (50, 50): side 20 * 1.4 = 28 -> [36, 64) both ways
    assert expand_to_square((40, 45, 60, 55), (200, 200), margin=0.2) == (36, 36, 64, 64)
    assert expand_to_square((40, 45, 60, 55), (200, 200), margin=0.0) == (40, 40, 60, 60)
    assert expand_to_square((40, 45, 60, 55), (200, 200), margin=0.5) == (30, 30, 70, 70)


def test_square_is_clipped_at_the_image_border():
    assert expand_to_square((0, 0, 10, 10), (100, 80), margin=0.2) == (0, 0, 12, 12)
    assert expand_to_square((90, 70, 100, 80), (100, 80), margin=0.2) == (88, 68, 100, 80)
    # a lesion filling the image keeps the whole image, never more
    assert expand_to_square((0, 0, 100, 80), (100, 80), margin=0.2) == (0, 0, 100, 80)


def test_empty_mask_gives_the_whole_image():
    assert crop_box_for(np.zeros((72, 96), np.uint8)) == ((0, 0, 96, 72), CROP_WHOLE_IMAGE)
    box, source = crop_box_for(_mask(72, 96, (40, 30, 50, 40)))
    assert source == CROP_LESION and box == (38, 28, 52, 42)


def test_cli_segment_then_classify_writes_crops_and_masks(trained_run: Path, trained_segmenter: Path, tmp_path: Path):
    out = tmp_path / "pred"
    argv = ["predict", "--segmenter", str(trained_segmenter), "--classifier", str(trained_run), "--data", "synthetic:12,seed=9"]
    assert main([*argv, "--crop-margin", "0.1", "--save-masks", "--out", str(out), "--quiet"]) == 0
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 12
    classes = ["bkl", "mel", "nv", "vasc"]
    assert list(rows[0]) == ["image", "label", *classes, "crop_box", "lesion_area_fraction", "crop", "mask", "error"]
    for row in rows:
        assert row["error"] == "" and row["label"] in classes
        assert sum(float(row[c]) for c in classes) == pytest.approx(1.0, abs=1e-4)
        x0, y0, x1, y1 = (int(v) for v in row["crop_box"].split(","))
        assert 0 <= x0 < x1 and 0 <= y0 < y1
        assert 0.0 <= float(row["lesion_area_fraction"]) <= 1.0
        assert row["crop"] in (CROP_LESION, CROP_WHOLE_IMAGE)
        assert (out / row["mask"]).is_file()


def test_cli_segment_then_classify_takes_image_files(trained_run: Path, trained_segmenter: Path, tmp_path: Path):
    from edgederm.data.synthetic import plan_synthetic, render_synthetic

    image = tmp_path / "lesion.png"
    render_synthetic(plan_synthetic(1, 3)[0], size=(96, 72))[0].save(image)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    out = tmp_path / "pred"
    argv = ["predict", str(image), str(bad), "--segmenter", str(trained_segmenter), "--classifier", str(trained_run)]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    rows = _rows(out / "predictions.csv")
    assert [Path(r["image"]).name for r in rows] == ["lesion.png", "bad.jpg"]
    assert rows[0]["error"] == "" and "mask" not in rows[0]
    assert rows[1]["error"] and rows[1]["crop_box"] == "" and rows[1]["bkl"] == ""


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--segmenter", "{seg}"], "--segmenter and --classifier go together"),
        (["--classifier", "{cls}"], "--segmenter and --classifier go together"),
        (["{cls}", "--segmenter", "{seg}", "--classifier", "{cls}"], "not both"),
        (["--segmenter", "{seg}", "--classifier", "{cls}", "--crop-margin", "-1"], "--crop-margin"),
        (["{cls}", "--crop-margin", "0.3"], "need --segmenter and --classifier"),
        ([], "give a MODEL"),
        (["--segmenter", "{cls}", "--classifier", "{cls}"], "--segmenter needs a segmentation model"),
        (["--segmenter", "{seg}", "--classifier", "{seg}"], "--classifier needs a classification model"),
    ],
)
def test_wrong_combinations_are_one_line_usage_errors(extra, expected, trained_run, trained_segmenter, tmp_path, capsys):
    argv = [a.format(seg=trained_segmenter, cls=trained_run) for a in extra]
    assert main(["predict", *argv, "--data", "synthetic:4", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "o" / "predictions.csv").exists()
