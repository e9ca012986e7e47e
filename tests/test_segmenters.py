"""Lesion segmenters: the models, joint augmentation, adversarial training, resume, and the CLI end to end."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import cli_env, write_csv
from PIL import Image
from safetensors.torch import load_file

from edgederm.cli import main
from edgederm.core.errors import DataError, UsageError
from edgederm.core.spec import ModelSpec
from edgederm.data.layouts import load_dataset
from edgederm.models import count_parameters, create_model, get_entry, list_models
from edgederm.runtime import Predictor
from edgederm.training.augment import augment_pairs
from edgederm.training.segmentation import SegmentConfig, train_segmenter

LIMITS = {"mobilegan": 2_500_000, "tinyseg": 100_000}
# What the converters (litert-torch, ONNX opset 18, coremltools) are known to take, after decomposition.
EXPORTABLE_OPS = {
    "aten._native_batch_norm_legit_no_training.default",
    "aten.add.Tensor",
    "aten.bmm.default",
    "aten.cat.default",
    "aten.conv2d.default",
    "aten.mul.Tensor",
    "aten.permute.default",
    "aten.relu.default",
    "aten.softmax.int",
    "aten.upsample_bilinear2d.vec",
    "aten.view.default",
    "<built-in function getitem>",
}


@pytest.fixture(autouse=True)
def _one_thread():
    # Models this small gain little from a second thread, and on a busy machine OpenMP's spinning
    # threads make a 2-thread step many times slower than a 1-thread one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _one_thread_env() -> dict[str, str]:
    env = cli_env()
    env["OMP_NUM_THREADS"] = "1"
    return env


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("name", ["mobilegan", "tinyseg"])
def test_segmenters_are_registered_small_and_keep_the_input_size(name: str):
    entry = get_entry(name)
    assert entry.task == "segmentation" and name in list_models(task="segmentation")
    model = create_model(name, 1).eval()
    assert count_parameters(model) <= LIMITS[name]
    for side in (32, 64, 96):
        with torch.no_grad():
            out = model(torch.randn(2, 3, side, side))
        assert out.shape == (2, 1, side, side) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["mobilegan", "tinyseg"])
def test_segmenters_use_only_exportable_ops(name: str):
    model = create_model(name, 1).eval()
    program = torch.export.export(model, (torch.zeros(1, 3, 64, 64),)).run_decompositions({})
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert ops <= EXPORTABLE_OPS, sorted(ops - EXPORTABLE_OPS)


def test_joint_augmentation_keeps_image_and_mask_aligned():
    rng = np.random.default_rng(0)
    masks = (rng.random((16, 12, 12)) < 0.3).astype(np.uint8) * 255
    masks[:, 0, 0] = 255  # an asymmetric marker, so every one of the 8 transforms moves something
    pixels = np.repeat(masks[..., None], 3, axis=3)  # the image shows its own mask in white
    aug_pixels, aug_masks = augment_pairs(torch.from_numpy(pixels), torch.from_numpy(masks), torch.Generator().manual_seed(1))
    assert aug_masks.dtype == torch.uint8 and set(np.unique(aug_masks.numpy())) <= {0, 255}
    np.testing.assert_array_equal(aug_pixels.numpy()[..., 0] > 127, aug_masks.numpy() > 0)
    assert sum(not np.array_equal(a, b) for a, b in zip(aug_masks.numpy(), masks)) >= 8  # most samples were moved
    assert not np.array_equal(aug_pixels.numpy()[..., 0], masks)  # colour jitter touched the image, not the mask


@pytest.mark.parametrize("adversarial", ["on", "off"])
def test_training_lowers_the_loss_with_and_without_the_critic(tmp_path: Path, adversarial: str):
    config = SegmentConfig(
        data="synthetic:48,seed=5",
        out=tmp_path / "run",
        arch="tinyseg",
        img_size=64,
        epochs=2,
        batch_size=8,
        adversarial=adversarial,
    )
    result = train_segmenter(config)
    rows = _rows(tmp_path / "run" / "metrics.csv")
    assert len(rows) == 2 and float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    assert ("critic_loss" in rows[0]) == (adversarial == "on")
    spec = result.spec
    assert spec.task == "segmentation" and spec.class_names == ["lesion"] and spec.output == "mask_logits"
    assert spec.postprocess == {"threshold": 0.5, "largest_component": True, "fill_holes": True}
    assert spec.preprocess.resize == "letterbox" and spec.preprocess.input_size == 64
    assert set(result.metrics["val"]) >= {"jaccard", "dice", "pixel_accuracy", "sensitivity", "specificity", "n"}
    for name in ("model.safetensors", "spec.json", "metrics.json", "splits.csv", "last_state.pt"):
        assert (tmp_path / "run" / name).is_file(), name
    torch.load(tmp_path / "run" / "last_state.pt", weights_only=True)


def test_one_adversarial_step_moves_the_critic_and_the_generator(tmp_path: Path):
    """The critic learns to tell true masks from predicted ones, and its verdict reaches the segmenter's update."""
    from edgederm.models.segmenters import MaskDiscriminator
    from edgederm.training.segmentation import _Trainer

    torch.manual_seed(0)
    inputs = torch.randn(4, 3, 64, 64)
    targets = (torch.rand(4, 1, 64, 64) > 0.5).float()

    def steps(adv_weight: float, n: int = 6):
        torch.manual_seed(1)
        model, critic = create_model("tinyseg", 1), MaskDiscriminator()
        trainer = _Trainer(SegmentConfig(data="synthetic:8", out=tmp_path / "x", arch="tinyseg", adv_weight=adv_weight, device="cpu"))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        critic_optimizer = torch.optim.AdamW(critic.parameters(), lr=1e-3, betas=(0.5, 0.999))
        critic_before = {k: v.clone() for k, v in critic.state_dict().items()}
        history = [trainer._step(model, optimizer, critic, critic_optimizer, inputs, targets) for _ in range(n)]
        critic_moved = any(not torch.equal(critic_before[k], v) for k, v in critic.state_dict().items())
        return model, history, critic_moved

    model, history, critic_moved = steps(adv_weight=0.1)
    assert critic_moved
    assert {"train_loss", "train_adv_loss", "critic_loss"} <= set(history[0])
    critic_losses = [h["critic_loss"] for h in history]
    adv_losses = [h["train_adv_loss"] for h in history]
    assert critic_losses[-1] < critic_losses[0]  # the critic gets better at spotting predicted masks
    assert len(set(adv_losses)) == len(adv_losses)  # the generator's adversarial loss moves every step
    # The same steps without the adversarial term update the segmenter differently: the critic's gradient flows.
    plain, _, _ = steps(adv_weight=0.0)
    assert any(not torch.allclose(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values(), strict=True))


def test_resume_after_a_kill_reaches_the_uninterrupted_weights(tmp_path: Path):
    """SIGKILL after epoch 1's checkpoint, then --resume: the same weights and metrics.csv as a straight run."""
    args = ["train", "segment", "--data", "synthetic:32,seed=2", "--arch", "tinyseg", "--img-size", "32"]
    args += ["--epochs", "2", "--batch-size", "4", "--adversarial", "on", "--quiet"]
    env = _one_thread_env()
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    subprocess.run([sys.executable, "-m", "edgederm", *args, "--out", str(straight)], check=True, env=env, capture_output=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "edgederm", *args, "--out", str(broken)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while not (broken / "last_state.pt").is_file() and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (broken / "model.safetensors").exists()
    loud = [a for a in args if a != "--quiet"]  # "resumed from" is an info message, which --quiet hides
    result = subprocess.run(
        [sys.executable, "-m", "edgederm", *loud, "--out", str(broken), "--resume"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stderr
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(broken / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert (straight / "metrics.csv").read_text() == (broken / "metrics.csv").read_text()


def test_data_without_masks_is_a_one_line_error(tmp_path: Path, folder_dir: Path, ham_dir: Path, capsys):
    with pytest.raises(DataError, match="no lesion mask.*fix:"):
        train_segmenter(SegmentConfig(data=f"folder:{folder_dir}", out=tmp_path / "a", arch="tinyseg", img_size=64))
    (tmp_path / "images").mkdir()
    for source in sorted((ham_dir / "images").glob("*.jpg"))[:6]:
        (tmp_path / "images" / source.name).write_bytes(source.read_bytes())
    rows = [[f"images/{p.name}", ""] for p in sorted((tmp_path / "images").glob("*.jpg"))]
    manifest = write_csv(tmp_path / "no_masks.csv", ["image", "label"], rows)
    assert (
        main(["train", "segment", "--data", f"manifest:{manifest}", "--arch", "tinyseg", "--img-size", "64", "--out", str(tmp_path / "b")])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"manifest:{manifest}" in err[0] and "no lesion mask" in err[0] and "mask column" in err[0]
    with pytest.raises(UsageError, match="multiple of 32"):
        SegmentConfig(data="synthetic:8", out=tmp_path / "c", arch="tinyseg", img_size=80)
    with pytest.raises(UsageError, match="classification model"):
        SegmentConfig(data="synthetic:8", out=tmp_path / "c", arch="mobilenetv2_100")


def test_every_masked_layout_loads_for_segmentation(ham_dir: Path, isic_dir: Path, manifest_csv: Path):
    for spec in (f"ham10000:{ham_dir}", f"isic2017:{isic_dir}", f"manifest:{manifest_csv}", "synthetic:4"):
        dataset = load_dataset(spec)
        dataset.require_masks()
        image, mask = dataset[0].load_image_and_mask()
        assert mask.shape == (image.size[1], image.size[0]) and set(np.unique(mask)) <= {0, 255}


def test_old_specs_without_postprocess_still_load():
    spec = ModelSpec.from_dict(
        {"task": "segmentation", "arch": "tinyseg", "class_names": ["lesion"], "preprocess": {"input_size": 64}, "output": "mask_logits"}
    )
    assert spec.postprocess == {}


def test_cli_train_predict_evaluate_end_to_end(tmp_path: Path, capsys):
    run = tmp_path / "run"
    train = ["train", "segment", "--data", "synthetic:60,seed=3", "--arch", "mobilegan", "--img-size", "64", "--epochs", "1"]
    assert main([*train, "--batch-size", "8", "--test-fraction", "0.2", "--out", str(run), "--quiet"]) == 0
    trained = json.loads((run / "metrics.json").read_text())

    assert main(["predict", str(run), "--data", "synthetic:60,seed=3", "--split", "test", "--out", str(tmp_path / "pred"), "--quiet"]) == 0
    rows = _rows(tmp_path / "pred" / "predictions.csv")
    assert len(rows) == trained["test"]["n"] and list(rows[0]) == ["image", "mask", "lesion_area_fraction", "error"]
    first = np.asarray(Image.open(tmp_path / "pred" / rows[0]["mask"]))
    assert first.shape == (192, 256) and first.dtype == np.uint8 and set(np.unique(first)) <= {0, 255}
    assert float(rows[0]["lesion_area_fraction"]) == pytest.approx(np.count_nonzero(first) / first.size, abs=1e-6)

    # The Predictor API gives the same mask for the same image.
    sample = next(s for s in load_dataset("synthetic:60,seed=3") if s.image_id == rows[0]["image"])
    np.testing.assert_array_equal(Predictor.load(run).predict_mask(sample.load_image()), first)

    assert main(["evaluate", str(run), "--data", "synthetic:60,seed=3", "--split", "test", "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for name in ("jaccard", "dice", "pixel_accuracy", "sensitivity", "specificity"):
        assert metrics[name] == pytest.approx(trained["test"][name], abs=1e-9), name  # training scores the way the runtime predicts
    assert "jaccard" in (tmp_path / "eval" / "report.md").read_text()

    capsys.readouterr()
    assert main(["evaluate", str(run), str(tmp_path / "pred" / "masks"), "--out", str(tmp_path / "e2")]) == 2
    assert "no lesion mask" in capsys.readouterr().err


def test_a_mask_round_trips_through_every_runtime_at_the_original_size(trained_segmenter: Path, tmp_path: Path):
    """torch, TFLite, ONNX Runtime and CoreML (emulated on Linux) give the same 0/255 mask at the photo's own size."""
    import shutil

    from edgederm.converters.tflite_metadata import standard_metadata

    from edgederm.core.formats import FORMATS
    from edgederm.export import export_run
    from edgederm.runtime.coreml_emulator import EmulatedCoreMLPredictor
    from edgederm.runtime.tflite_backend import TFLITE_METADATA, read_tflite_metadata

    # An odd, non-square photo exercises the letterbox both ways and the resize back to the photo's size.
    image = load_dataset("synthetic:1,seed=11")[0].load_image().resize((171, 113))
    # The session's tiny segmenter is barely trained, so its probabilities are nearly flat: a copy of the run whose
    # threshold is their 85th percentile gives a mask with real structure to carry through every runtime.
    run = Path(shutil.copytree(trained_segmenter, tmp_path / "run"))
    spec = ModelSpec.load(run / "spec.json")
    probabilities = Predictor.load(run).predict_pixels(spec.preprocess.fit(image)[None])
    spec.postprocess = {**spec.postprocess, "threshold": float(np.quantile(probabilities, 0.85))}
    (run / "spec.json").write_text(spec.to_json())

    records = export_run(run, [FORMATS[f] for f in ("tflite", "onnx", "coreml")], ["fp32"], tmp_path / "export")
    assert all(r.status == "ok" for r in records), [(r.format, r.message) for r in records]
    reference = Predictor.load(run).predict_mask(image)
    assert reference.shape == (113, 171) and reference.dtype == np.uint8 and set(np.unique(reference)) <= {0, 255}
    assert 0.01 < (reference > 0).mean() < 0.9
    for record in records:
        path = tmp_path / "export" / record.path
        predictor = EmulatedCoreMLPredictor(path) if record.format == "coreml" else Predictor.load(path)
        if record.format == "tflite":  # NHWC: MediaPipe's ImageSegmenter metadata (tests/test_mediapipe_client.py runs it)
            assert read_tflite_metadata(path.read_bytes())[TFLITE_METADATA] == standard_metadata(predictor.spec)
            assert predictor.spec.artifact["output"]["shape"] == [1, 64, 64, 1]
        mask = predictor.predict_mask(image)
        assert mask.shape == reference.shape and mask.dtype == np.uint8, record.format
        iou = np.logical_and(mask > 0, reference > 0).sum() / np.logical_or(mask > 0, reference > 0).sum()
        assert iou > 0.98, (record.format, iou)
