"""Training end to end on synthetic data: head and full modes, checkpoints, resume, calibration."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_env, corrupt_jpeg, write_csv
from safetensors.torch import load_file

from edgederm.core.errors import DataError, ModelError, UsageError
from edgederm.core.spec import ModelSpec
from edgederm.models.checkpoint import load_checkpoint
from edgederm.models.inference import normalize_tensor
from edgederm.runtime import Predictor
from edgederm.training.calibration import fit_temperature
from edgederm.training.classification import TrainConfig, train_classifier

TINY = {"arch": "mobilenetv3_small_100", "img_size": 64}


def test_head_training_writes_a_complete_run(trained_run: Path):
    for name in ("model.safetensors", "spec.json", "metrics.csv", "metrics.json", "splits.csv", "last_state.pt"):
        assert (trained_run / name).is_file(), name
    spec = ModelSpec.load(trained_run / "spec.json")
    assert spec.task == "classification" and spec.arch == "mobilenetv3_small_100"
    assert spec.class_names == ["bkl", "mel", "nv", "vasc"]
    assert spec.preprocess.input_size == 64 and spec.temperature_folded and spec.temperature > 0
    assert spec.training["data"]["images"] == 60 and "test" in spec.metrics and "val" in spec.metrics
    assert len(spec.source_sha256) == 64
    metrics_rows = (trained_run / "metrics.csv").read_text().strip().splitlines()
    assert metrics_rows[0].startswith("epoch,train_loss") and len(metrics_rows) == 4


def test_checkpoint_round_trip_predicts_the_same(trained_run: Path):
    model, spec = load_checkpoint(trained_run)
    predictor = Predictor.load(trained_run)
    pixels = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        logits = model(torch.from_numpy(spec.preprocess.normalize(pixels)))
    np.testing.assert_allclose(predictor.predict_pixels(pixels), torch.softmax(logits, 1).numpy(), atol=1e-6)
    assert np.allclose(predictor.predict_pixels(pixels).sum(1), 1.0, atol=1e-5)


def test_tampered_weights_are_refused(trained_run: Path, tmp_path: Path):
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("model.safetensors", "spec.json"):
        (copy / name).write_bytes((trained_run / name).read_bytes())
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="do not match the sha256"):
        load_checkpoint(copy)
    (copy / "model.safetensors").write_bytes(bytes(data[:100]))
    with pytest.raises(ModelError, match="cannot read the weights|sha256"):
        load_checkpoint(copy)


@pytest.mark.parametrize("extra", [[], ["--augment", "affine", "--ema", "0.9"], ["--qat"]], ids=["basic", "affine+ema", "qat"])
def test_full_training_and_resume_reach_the_same_weights(tmp_path: Path, extra: list[str]):
    """A run killed with SIGKILL mid-training and resumed ends with the uninterrupted run's weights."""
    args = [
        "train",
        "classify",
        "--data",
        "synthetic:48,seed=2",
        "--arch",
        "mobilenetv3_small_100",
        "--img-size",
        "48",
        "--mode",
        "full",
        "--epochs",
        "3",
        "--batch-size",
        "8",
        *extra,
    ]
    env = cli_env()
    straight = tmp_path / "straight"
    subprocess.run([sys.executable, "-m", "edgederm", *args, "--quiet", "--out", str(straight)], check=True, env=env, capture_output=True)

    broken = tmp_path / "broken"
    process = subprocess.Popen(
        [sys.executable, "-m", "edgederm", *args, "--quiet", "--out", str(broken)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (broken / "last_state.pt").is_file() and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # during epoch 2, after epoch 1's checkpoint
    process.wait()
    assert not (broken / "model.safetensors").exists()
    result = subprocess.run(  # without --quiet: "resumed from" is an INFO line
        [sys.executable, "-m", "edgederm", *args, "--out", str(broken), "--resume"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stderr

    a, b = load_file(str(straight / "model.safetensors")), load_file(str(broken / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert (straight / "metrics.csv").read_text() == (broken / "metrics.csv").read_text()


def test_resume_with_a_different_recipe_is_refused(tmp_path: Path):
    out = tmp_path / "run"
    train_classifier(TrainConfig(data="synthetic:24", out=out, mode="head", epochs=1, weights="none", **TINY))
    with pytest.raises(Exception, match="different recipe"):
        train_classifier(TrainConfig(data="synthetic:24", out=out, mode="head", epochs=2, lr=0.5, weights="none", resume=True, **TINY))


@pytest.fixture
def info_on_stderr():
    """edgederm's INFO lines on stderr (fd 2, which capfd reads) for one test, as the CLI shows them; a library stays silent."""
    import logging

    from edgederm.core.log import logger

    handler = logging.StreamHandler(sys.__stderr__)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_corrupt_image_in_a_dataset_is_skipped_and_counted(tmp_path: Path, ham_dir: Path, capfd, info_on_stderr):
    import shutil

    shutil.copytree(ham_dir / "images", tmp_path / "images")
    rows = [line.split(",")[:3] for line in (ham_dir / "HAM10000_metadata.csv").read_text().splitlines()[1:]]
    victim = tmp_path / "images" / f"{rows[0][1]}.jpg"
    corrupt_jpeg(victim)
    write_csv(tmp_path / "HAM10000_metadata.csv", ["lesion_id", "image_id", "dx"], rows)
    result = train_classifier(TrainConfig(data=f"ham10000:{tmp_path}", out=tmp_path / "run", mode="head", epochs=1, weights="none", **TINY))
    assert len(result.skipped_images) == 1 and str(victim) in result.skipped_images[0]
    err = capfd.readouterr().err
    assert f"skipped unreadable image: {victim}" in err and "1 unreadable image(s) were skipped" in err
    assert result.spec.training["skipped_images"] == 1


def test_external_validation_set_sharing_a_lesion_is_leakage(tmp_path: Path, manifest_csv: Path):
    with pytest.raises(DataError, match="leakage"):
        train_classifier(
            TrainConfig(
                data=f"manifest:{manifest_csv}", val_data=f"manifest:{manifest_csv}", out=tmp_path / "r", mode="head", epochs=1, **TINY
            )
        )


def test_manifest_split_column_with_a_leak_fails_loudly(tmp_path: Path, manifest_csv: Path):
    lines = manifest_csv.read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    group = rows[0][3]
    splits = ["test" if r[3] == group and i == 0 else "train" for i, r in enumerate(rows)]
    leaky = write_csv(
        manifest_csv.parent / "leaky.csv", ["image", "label", "mask", "group", "split"], [r + [s] for r, s in zip(rows, splits)]
    )
    sharing = sum(r[3] == group for r in rows)
    if sharing < 2:
        pytest.skip("the first lesion has a single image in this draw")
    with pytest.raises(DataError, match="leakage"):
        train_classifier(TrainConfig(data=f"manifest:{leaky}", out=tmp_path / "r", mode="head", epochs=1, **TINY))


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 4)) * 2
    labels = np.array([rng.choice(4, p=np.exp(z) / np.exp(z).sum()) for z in true_logits])
    assert fit_temperature(true_logits * 3.0, labels) == pytest.approx(3.0, rel=0.08)
    assert fit_temperature(true_logits, labels) == pytest.approx(1.0, rel=0.08)


def test_training_is_reproducible_with_a_seed(tmp_path: Path):
    runs = []
    for name in ("a", "b"):
        train_classifier(TrainConfig(data="synthetic:32", out=tmp_path / name, mode="head", epochs=2, weights="none", **TINY))
        runs.append(json.loads((tmp_path / name / "metrics.json").read_text()))
    assert runs[0] == runs[1]


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path: Path):
    """The same command runs unchanged under torchrun with 2 processes (gloo on CPU)."""
    out = tmp_path / "ddp"
    # No --quiet: "world size 2" is an INFO line.
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", "-m", "edgederm",
        "train", "classify", "--data", "synthetic:48,seed=3", "--arch", "mobilenetv3_small_100", "--img-size", "48",
        "--mode", "full", "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--out", str(out),
    ]  # fmt: skip
    env = cli_env()
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "world size 2" in result.stderr
    spec = ModelSpec.load(out / "spec.json")
    assert spec.training["world_size"] == 2
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3
    Predictor.load(out)  # the DDP run's checkpoint loads like any other


def test_asking_for_cuda_without_a_gpu_is_a_one_line_error(monkeypatch):
    from edgederm.core.errors import UsageError
    from edgederm.training.distributed import choose_device

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(UsageError, match="no CUDA device.*--device cpu"):
        choose_device("cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UsageError, match="process 1 has no GPU.*nproc_per_node=1"):
        choose_device("cuda", local_rank=1)


def test_qat_fine_tunes_a_run_through_simulated_int8(tmp_path: Path):
    common = dict(data="synthetic:48,seed=2", arch="mobilenetv3_small_100", img_size=48, mode="full", batch_size=8)
    source = train_classifier(TrainConfig(out=tmp_path / "float", epochs=1, **common))
    tuned = train_classifier(TrainConfig(out=tmp_path / "qat", epochs=1, lr=1e-4, init_from=str(source.run_dir), qat=True, **common))
    assert tuned.spec.training["recipe"]["qat"] and tuned.spec.training["init_from_sha256"] == source.spec.source_sha256
    assert tuned.spec.training["weights"] == f"run:{source.run_dir}"
    before, after = load_file(str(source.run_dir / "model.safetensors")), load_file(str(tuned.run_dir / "model.safetensors"))
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())

    from edgederm.training import qat

    model, spec = load_checkpoint(tuned.run_dir)
    example = torch.from_numpy(spec.preprocess.normalize(np.random.default_rng(0).integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)))
    simulated = qat.fixed_batch(qat.train_mode(qat.prepare(model, example), False), len(example))
    with torch.no_grad():
        simulated(example)  # the observers need one batch before the fake quantizers round anything
        gap = (simulated(example[:3]) - model.eval()(example[:3])).abs().max().item()
    assert 0 < gap < 5, "the QAT graph must round like int8, and stay close to the float model"


def test_init_from_refuses_another_model_or_split_and_takes_another_size(tmp_path: Path):
    source = train_classifier(TrainConfig(data="synthetic:32,seed=1", out=tmp_path / "src", mode="head", epochs=1, weights="none", **TINY))
    with pytest.raises(UsageError, match="for classes"):
        train_classifier(
            TrainConfig(
                data="synthetic:32,seed=1",
                out=tmp_path / "a",
                mode="full",
                epochs=1,
                init_from=str(source.run_dir),
                **{**TINY, "arch": "efficientnet_lite0"},
            )
        )
    with pytest.raises(UsageError, match="validated and tested on other images.*split as it was .*--seed 0"):
        train_classifier(
            TrainConfig(
                data="synthetic:32,seed=1", out=tmp_path / "b", mode="full", epochs=1, seed=7, init_from=str(source.run_dir), **TINY
            )
        )
    with pytest.raises(UsageError, match="--mode full"):
        TrainConfig(data="synthetic:32", out=tmp_path / "c", mode="head", qat=True)
    with pytest.raises(UsageError, match="--mode full"):
        TrainConfig(data="synthetic:32", out=tmp_path / "c", mode="head", ema=0.99)
    # another input size is a student at a lower resolution: the source's preprocessing, resized
    common = {"data": "synthetic:32,seed=1", "mode": "full", "epochs": 1, "init_from": str(source.run_dir)}
    tuned = train_classifier(TrainConfig(out=tmp_path / "at96", **common, **{**TINY, "img_size": 96}))
    assert tuned.spec.preprocess == replace(source.spec.preprocess, input_size=96)
    assert tuned.spec.training["init_from_sha256"] == source.spec.source_sha256


def test_extra_train_joins_the_train_split_only_and_a_fine_tune_may_add_it(tmp_path: Path):
    source = train_classifier(TrainConfig(data="synthetic:32,seed=1", out=tmp_path / "src", mode="head", epochs=1, weights="none", **TINY))
    common = {"data": "synthetic:32,seed=1", "mode": "full", "epochs": 1, "init_from": str(source.run_dir), **TINY}
    tuned = train_classifier(TrainConfig(out=tmp_path / "more", extra_train="synthetic:16,seed=9", **common))
    rows = list(csv.DictReader(open(tuned.run_dir / "splits.csv")))
    extra = [r for r in rows if r["source"] == "synthetic:16,seed=9"]
    assert len(rows) == 48 and len(extra) == 16 and {r["split"] for r in extra} == {"train"}
    assert {r["source"] for r in rows if r not in extra} == {""}  # the run's own --data, which its spec.json names
    assert [r for r in rows if r["split"] != "train"] == [
        r for r in csv.DictReader(open(source.run_dir / "splits.csv")) if r["split"] != "train"
    ]
    assert tuned.spec.training["data"]["images"] == 48
    with pytest.raises(DataError, match="leakage: .* of --extra-train are in a val/test split"):
        train_classifier(TrainConfig(out=tmp_path / "leak", extra_train="synthetic:32,seed=1", **common))


def test_distillation_trains_a_smaller_student_at_another_size(trained_run: Path, tmp_path: Path):
    student = train_classifier(
        TrainConfig(
            data="synthetic:60,seed=4",
            out=tmp_path / "student",
            arch="mobilenetv3_small_100",
            img_size=48,
            mode="full",
            epochs=1,
            batch_size=8,
            test_fraction=0.2,  # the teacher's split, so it never saw this run's val/test images
            distill_from=str(trained_run),
        )
    )
    assert student.spec.training["teacher_sha256"] == ModelSpec.load(trained_run / "spec.json").source_sha256
    assert student.spec.preprocess.input_size == 48 and student.spec.class_names == ["bkl", "mel", "nv", "vasc"]


def test_a_teacher_that_trained_on_this_runs_test_images_is_refused(trained_run: Path, tmp_path: Path):
    config = TrainConfig(
        data="synthetic:60,seed=4",
        out=tmp_path / "s",
        mode="full",
        epochs=1,
        test_fraction=0.2,
        seed=1,
        distill_from=str(trained_run),
        **TINY,
    )
    with pytest.raises(UsageError, match=r"was trained on .* of this run's val/test images.*split as the teacher was \(--val-fraction"):
        train_classifier(config)
    assert not (tmp_path / "s" / "model.safetensors").exists()


def test_distillation_loss_is_the_hard_loss_when_the_student_matches_the_teacher(trained_run: Path):
    from edgederm.training.extensions import Distillation

    spec = ModelSpec.load(trained_run / "spec.json")
    teacher = Distillation(str(trained_run), spec.class_names, spec.preprocess, torch.device("cpu"), weight=0.25)
    pixels = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (4, 48, 48, 3), dtype=np.uint8))
    with torch.no_grad():
        inputs = torch.nn.functional.interpolate(
            normalize_tensor(pixels, spec.preprocess), size=(64, 64), mode="bilinear", antialias=True, align_corners=False
        )
        same = teacher.model(inputs)
    hard = torch.tensor(1.0)
    assert teacher.loss(same, hard, pixels).item() == pytest.approx(0.75, abs=1e-4)
    confident_elsewhere = torch.nn.functional.one_hot(same.argmin(1), same.shape[1]).float() * 20
    assert teacher.loss(confident_elsewhere, hard, pixels).item() > 0.75 + 1.0
    with pytest.raises(UsageError, match="not this run's classes"):
        Distillation(str(trained_run), ["mel", "nv"], spec.preprocess, torch.device("cpu"))


def test_config_choices_match_the_modules_that_implement_them():
    """training/config.py stays torch-free with copies of a few constants; they must not drift."""
    from edgederm.core import preprocess
    from edgederm.metrics import decision, operating_point
    from edgederm.training import augment, config

    assert config.AUGMENT_POLICIES == augment.POLICIES
    assert config.RESIZE_POLICIES == preprocess.RESIZE_POLICIES
    assert config.DECISION_RULES == decision.RULES
    assert config.DEFAULT_TARGET_SENSITIVITY == operating_point.DEFAULT_TARGET_SENSITIVITY


def test_cli_options_are_the_config_fields(tmp_path: Path):
    """Every TrainConfig/SegmentConfig field on the command line parses into the config unchanged."""
    from edgederm.cli import build_parser
    from edgederm.cli.train import config_from_args
    from edgederm.training.config import SegmentConfig

    args = build_parser().parse_args(["train", "classify", "--data", "synthetic:8", "--out", str(tmp_path), "--mode", "full", "--qat"])
    config = config_from_args(TrainConfig, args)
    assert config == TrainConfig(data="synthetic:8", out=tmp_path, mode="full", qat=True)
    args = build_parser().parse_args(
        ["train", "segment", "--data", "synthetic:8", "--out", str(tmp_path), "--arch", "tinyseg", "--img-size", "32"]
    )
    assert config_from_args(SegmentConfig, args) == SegmentConfig(data="synthetic:8", out=tmp_path, arch="tinyseg", img_size=32)
    assert not hasattr(config, "quiet") and args.quiet is False


def test_skip_test_holds_the_test_split_out_without_scoring_it(tmp_path: Path):
    from edgederm.training.segmentation import SegmentConfig, train_segmenter

    common = {"data": "synthetic:32,seed=1", "mode": "head", "epochs": 1, "weights": "none", "test_fraction": 0.2, **TINY}
    scored = train_classifier(TrainConfig(out=tmp_path / "scored", **common))
    held = train_classifier(TrainConfig(out=tmp_path / "held", skip_test=True, **common))
    assert "test" in scored.metrics and "test" not in held.metrics and "val" in held.metrics
    splits = [(tmp_path / run / "splits.csv").read_text() for run in ("scored", "held")]
    assert splits[0] == splits[1] and ",test," in splits[1]  # the same lesions are held out either way
    segmenter = train_segmenter(
        SegmentConfig(
            data="synthetic:24,seed=2", out=tmp_path / "seg", arch="tinyseg", img_size=64, epochs=1, test_fraction=0.2, skip_test=True
        )
    )
    assert "test" not in segmenter.spec.metrics and "val" in segmenter.spec.metrics
