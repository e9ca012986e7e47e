"""Every --data layout reads correctly, and every wrong layout fails with one line naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import write_csv

from edgederm.core.errors import DataError, UsageError
from edgederm.core.labels import DX_CODES
from edgederm.data.layouts import images_from_paths, load_dataset, parse_data_spec


def test_parse_data_spec_options():
    assert parse_data_spec("synthetic:200,seed=3") == ("synthetic", "200", {"seed": "3"})
    assert parse_data_spec("ham10000:/data/ham") == ("ham10000", "/data/ham", {})
    with pytest.raises(UsageError, match="unknown data spec"):
        parse_data_spec("imagenet:/x")
    with pytest.raises(UsageError):
        parse_data_spec("no-colon-here")


def test_ham10000_layout_reads_labels_groups_and_masks(ham_dir: Path):
    data = load_dataset(f"ham10000:{ham_dir}")
    assert len(data) == 40
    assert set(data.labels) <= set(DX_CODES)
    assert all(s.mask_path is not None and s.mask_path.is_file() for s in data)
    assert len(set(data.groups)) < len(data)  # several images share a lesion_id
    image = data[0].load_image()
    assert image.mode == "RGB" and image.size == (96, 72)
    mask = data[0].load_mask(expected_size=image.size)
    assert mask.shape == (72, 96) and set(mask.ravel().tolist()) <= {0, 255}


def test_ham10000_missing_metadata_names_the_folder(tmp_path: Path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError) as error:
        load_dataset(f"ham10000:{tmp_path}")
    message = str(error.value)
    assert "HAM10000_metadata.csv" in message and str(tmp_path) in message and "\n" not in message


def test_ham10000_missing_column_and_unknown_label(tmp_path: Path, ham_dir: Path):
    shutil.copytree(ham_dir / "images", tmp_path / "images")
    write_csv(tmp_path / "HAM10000_metadata.csv", ["lesion_id", "image_id"], [["L1", "x"]])
    with pytest.raises(DataError, match=r"missing column\(s\) \['dx'\]"):
        load_dataset(f"ham10000:{tmp_path}")
    image_id = next((tmp_path / "images").iterdir()).stem
    write_csv(tmp_path / "HAM10000_metadata.csv", ["lesion_id", "image_id", "dx"], [["L1", image_id, "melanoma"]])
    with pytest.raises(DataError, match="line 2: unknown label 'melanoma'.*akiec"):
        load_dataset(f"ham10000:{tmp_path}")


def test_ham10000_duplicate_ids_are_refused(tmp_path: Path, ham_dir: Path):
    shutil.copytree(ham_dir / "images", tmp_path / "images")
    image_id = next((tmp_path / "images").iterdir()).stem
    write_csv(tmp_path / "HAM10000_metadata.csv", ["lesion_id", "image_id", "dx"], [["L1", image_id, "nv"], ["L2", image_id, "nv"]])
    with pytest.raises(DataError, match="duplicate image id"):
        load_dataset(f"ham10000:{tmp_path}")


def test_ham10000_missing_images_are_counted_not_fatal(tmp_path: Path, ham_dir: Path):
    shutil.copytree(ham_dir / "images", tmp_path / "images")
    rows = [["L1", p.stem, "nv"] for p in sorted((tmp_path / "images").iterdir())]
    rows.append(["L9", "ISIC_missing", "mel"])
    write_csv(tmp_path / "HAM10000_metadata.csv", ["lesion_id", "image_id", "dx"], rows)
    data = load_dataset(f"ham10000:{tmp_path}")
    assert len(data) == 40
    assert any("1 images listed" in note and "missing" in note for note in data.notes)


def test_isic2017_layout_maps_labels(isic_dir: Path):
    data = load_dataset(f"isic2017:{isic_dir}")
    assert len(data) == 24
    assert set(data.labels) <= {"mel", "bkl", "nv"}
    assert all(s.group == s.image_id for s in data)  # no lesion ids in ISIC 2017: each image is its own group


def test_isic2017_both_positive_is_an_error(tmp_path: Path, isic_dir: Path):
    shutil.copytree(isic_dir / "images", tmp_path / "images")
    image_id = next((tmp_path / "images").iterdir()).stem
    write_csv(tmp_path / "labels.csv", ["image_id", "melanoma", "seborrheic_keratosis"], [[image_id, 1.0, 1.0]])
    with pytest.raises(DataError, match="both melanoma and seborrheic keratosis"):
        load_dataset(f"isic2017:{tmp_path}")


def test_isic2017_wrong_layout(tmp_path: Path):
    with pytest.raises(DataError, match="labels.csv not found"):
        load_dataset(f"isic2017:{tmp_path}")
    with pytest.raises(DataError, match="no such directory"):
        load_dataset(f"isic2017:{tmp_path / 'nope'}")


def test_manifest_layout(manifest_csv: Path):
    data = load_dataset(f"manifest:{manifest_csv}")
    assert len(data) == 40
    assert all(s.mask_path is not None for s in data)
    ham = load_dataset(f"ham10000:{manifest_csv.parent}")
    assert sorted(data.groups) == sorted(ham.groups)


def test_manifest_split_column_and_split_option(tmp_path: Path, ham_dir: Path):
    shutil.copytree(ham_dir / "images", tmp_path / "images")
    files = sorted((tmp_path / "images").iterdir())
    rows = [[f"images/{p.name}", "nv", "", p.stem, "train" if i % 4 else "test"] for i, p in enumerate(files)]
    manifest = write_csv(tmp_path / "m.csv", ["image", "label", "mask", "group", "split"], rows)
    assert len(load_dataset(f"manifest:{manifest},split=test")) == 10
    rows[0][4] = "holdout"
    write_csv(manifest, ["image", "label", "mask", "group", "split"], rows)
    with pytest.raises(DataError, match="unknown split 'holdout'"):
        load_dataset(f"manifest:{manifest}")


@pytest.mark.parametrize("bad_path", ["../outside.jpg", "/etc/passwd", "images/../../x.jpg"])
def test_manifest_refuses_paths_that_escape_the_root(tmp_path: Path, bad_path: str):
    manifest = write_csv(tmp_path / "m.csv", ["image", "label"], [[bad_path, "nv"]])
    with pytest.raises(DataError, match="escapes the dataset folder") as error:
        load_dataset(f"manifest:{manifest}")
    assert str(manifest) in str(error.value)


def test_manifest_missing_file_and_columns(tmp_path: Path):
    manifest = write_csv(tmp_path / "m.csv", ["image", "label"], [["images/nope.jpg", "nv"]])
    with pytest.raises(DataError, match="line 2: image file 'images/nope.jpg' not found"):
        load_dataset(f"manifest:{manifest}")
    manifest = write_csv(tmp_path / "m2.csv", ["path", "dx"], [["a.jpg", "nv"]])
    with pytest.raises(DataError, match=r"missing column\(s\) \['image', 'label'\]"):
        load_dataset(f"manifest:{manifest}")
    with pytest.raises(DataError, match="file not found"):
        load_dataset(f"manifest:{tmp_path / 'absent.csv'}")


def test_folder_layout(folder_dir: Path):
    data = load_dataset(f"folder:{folder_dir}")
    assert len(data) == 24
    assert set(data.labels) == {p.name for p in folder_dir.iterdir()}


def test_folder_layout_with_unknown_class_folder(tmp_path: Path):
    (tmp_path / "cats").mkdir()
    with pytest.raises(DataError, match=r"sub-folder\(s\) \['cats'\] are not dx codes"):
        load_dataset(f"folder:{tmp_path}")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset(f"folder:{empty}")


def test_synthetic_layout_is_reproducible():
    first, again, other = (load_dataset(s) for s in ("synthetic:30,seed=5", "synthetic:30,seed=5", "synthetic:30,seed=6"))
    assert [s.image_id for s in first] == [s.image_id for s in again]
    assert first.labels == again.labels
    assert [s.image_id for s in first] != [s.image_id for s in other]
    assert first[0].has_mask and first[0].load_mask().max() == 255


@pytest.mark.parametrize("spec", ["synthetic:abc", "synthetic:0", "synthetic:10,colour=red"])
def test_synthetic_bad_specs(spec: str):
    with pytest.raises(UsageError):
        load_dataset(spec)


def test_images_from_paths(folder_dir: Path):
    some = sorted(folder_dir.rglob("*.png"))[:2]
    data = images_from_paths([str(some[0]), str(some[1].parent)])
    assert len(data) == 1 + len(list(some[1].parent.glob("*.png")))
    assert all(s.label is None for s in data)
    with pytest.raises(DataError, match="no such file or folder"):
        images_from_paths([str(folder_dir / "absent.jpg")])


@pytest.mark.realdata
def test_real_ham10000_and_isic2017_layouts():
    from conftest import SHARED_DATA

    if not (SHARED_DATA / "ham10000" / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    ham = load_dataset(f"ham10000:{SHARED_DATA / 'ham10000'}")
    assert len(ham) == 8505 and len(set(ham.groups)) == 6350
    assert ham.class_counts() == {"akiec": 274, "bcc": 435, "bkl": 940, "df": 97, "mel": 945, "nv": 5693, "vasc": 121}
    isic = load_dataset(f"isic2017:{SHARED_DATA / 'isic2017' / 'train'}")
    assert len(isic) == 2000 and set(isic.labels) == {"mel", "bkl", "nv"}


def test_manifest_row_longer_than_the_header(tmp_path: Path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,label\na.jpg,nv,extra\n")
    with pytest.raises(DataError, match="line 2: more cells than the header has columns"):
        load_dataset(f"manifest:{manifest}")


def test_train_of_keeps_only_another_runs_train_lesions(tmp_path: Path, ham_dir: Path):
    data = load_dataset(f"ham10000:{ham_dir}")
    groups = sorted(set(data.groups))
    held_out_groups = set(groups[::3])
    header = ["image_id", "group", "label", "split"]
    rows = [[s.image_id, s.group, s.label, "test" if s.group in held_out_groups else "train"] for s in data]
    run = tmp_path / "run"
    run.mkdir()
    write_csv(run / "splits.csv", header, rows)
    kept = load_dataset(f"ham10000:{ham_dir},train_of={run}")
    assert 0 < len(kept) < len(data)
    assert {s.image_id for s in kept} == {r[0] for r in rows if r[3] == "train"}
    assert not {s.group for s in kept} & held_out_groups
    assert load_dataset(f"ham10000:{ham_dir},train_of={run / 'splits.csv'}").samples == kept.samples

    write_csv(run / "splits.csv", header, [["ISIC_9999999", "g", "nv", "train"]])
    with pytest.raises(DataError, match="none of the train images"):
        load_dataset(f"ham10000:{ham_dir},train_of={run}")
    with pytest.raises(DataError, match="not found"):
        load_dataset(f"ham10000:{ham_dir},train_of={tmp_path / 'missing'}")
    with pytest.raises(
        DataError, match=r"none of the train images of .*lite0-ham10000/splits\.csv"
    ):  # a zoo entry's split, of other images than these
        load_dataset(f"ham10000:{ham_dir},train_of=zoo:lite0-ham10000")
