"""Structured pruning of inverted-residual blocks (``--prune``): exact slicing, stored widths, every runtime."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch

from edgederm.cli import main
from edgederm.core.spec import ModelSpec
from edgederm.models import pruning


def _random_stats(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)


@pytest.mark.parametrize("arch", ["efficientnet_lite0", "mobilenetv3_small_100"])
def test_removing_channels_that_feed_nothing_leaves_the_output_unchanged(arch):
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=7).eval()
    _random_stats(model)
    for block in pruning.blocks(model):
        width = block.conv_pwl.in_channels
        dead = torch.randperm(width)[: width - pruning.kept_width(width, 0.5)]
        block.conv_pwl.weight.data[:, dead] = 0  # these channels reach neither the project conv ...
        if hasattr(block.se, "conv_reduce"):
            block.se.conv_reduce.weight.data[:, dead] = 0  # ... nor MobileNetV3's squeeze-excite
    images = torch.randn(2, 3, 64, 64)
    before = model(images)
    widths = pruning.prune(model, 0.5, pruning.importance(model, [images]))

    assert widths == [pruning.kept_width(w, 0.5) for w in pruning.mid_channels(timm.create_model(arch))]
    assert torch.allclose(model(images), before, atol=1e-4)  # exactly the dead channels went, with their BN, dw and SE weights
    rebuilt = timm.create_model(arch, num_classes=7).eval()
    pruning.shrink(rebuilt, widths)
    rebuilt.load_state_dict(model.state_dict())  # the stored widths are all a checkpoint needs to load
    assert torch.equal(rebuilt(images), model(images))


def test_kept_widths_are_multiples_of_8_within_the_block():
    for width in (16, 72, 96, 144, 1152):
        for ratio in (0.1, 0.3, 0.5, 0.9):
            kept = pruning.kept_width(width, ratio)
            assert kept % 8 == 0 and 8 <= kept <= width
    assert pruning.kept_width(96, 0.25) == 72
    with pytest.raises(ValueError, match="ratio"):
        pruning.prune(torch.nn.Identity(), 1.0, [])


def test_a_pruned_fine_tune_stores_its_widths_and_runs_in_torch_and_onnx(trained_run, tmp_path):
    from edgederm.core.formats import FORMATS
    from edgederm.export import export_run
    from edgederm.runtime import Predictor

    out = tmp_path / "pruned"
    args = ["train", "classify", "--data", "synthetic:60,seed=4", "--arch", "mobilenetv3_small_100", "--img-size", "64"]
    args += ["--mode", "full", "--epochs", "1", "--batch-size", "8", "--test-fraction", "0.2", "--quiet", "--out", str(out)]
    assert main([*args, "--init-from", str(trained_run), "--prune", "0.5"]) == 0

    spec = ModelSpec.load(out / "spec.json")
    full = pruning.mid_channels(timm.create_model("mobilenetv3_small_100"))
    assert spec.arch_options["mid_channels"] == [pruning.kept_width(w, 0.5) for w in full]
    assert "mid_channels" not in ModelSpec.load(trained_run / "spec.json").arch_options
    assert (out / "model.safetensors").stat().st_size < 0.8 * (trained_run / "model.safetensors").stat().st_size

    torch_model = Predictor.load(out)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 64, 64, 3), dtype=np.uint8)
    (record,) = export_run(out, [FORMATS["onnx"]], ["fp32"], tmp_path / "export")
    assert record.status == "ok", record.message
    onnx_probs = Predictor.load(tmp_path / "export" / record.path).predict_pixels(pixels)
    assert np.abs(onnx_probs - torch_model.predict_pixels(pixels)).max() < 1e-4


def test_prune_needs_a_trained_run_and_a_share_below_one(tmp_path, capsys):
    base = ["train", "classify", "--data", "synthetic:20", "--mode", "full", "--out", str(tmp_path / "x"), "--quiet"]
    assert main([*base, "--prune", "0.4"]) == 2
    assert "--prune shrinks a trained network" in capsys.readouterr().err
    assert main([*base, "--init-from", str(tmp_path), "--prune", "1.5"]) == 2
    assert "--prune must be a share in (0, 1)" in capsys.readouterr().err
