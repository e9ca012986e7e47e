"""The training recipes: ``TrainConfig`` (classifier) and ``SegmentConfig`` (segmenter).

Each field is defined once, with its CLI help: ``option(default, help=..., choices=..., metavar=...)``.
``edgederm train classify|segment`` turns the fields, in order, into ``--kebab-case`` arguments
(``edgederm.cli.train``), so a new field is a new flag. ``cli=False`` keeps a field off the command line.

A recipe is also what ``--resume`` checks: ``same_recipe`` is the one rule both trainers use.
This module imports neither torch nor numpy, so ``edgederm --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..core import zoo
from ..core.errors import UsageError
from ..metrics.decision import parse_floor

MODES = ("head", "full")
BALANCE = ("weighted_loss", "none")
ON_OFF = ("on", "off")
AMP = ("auto", "on", "off")
# The sources of truth import torch or numpy; tests/test_training.py checks these copies against them.
AUGMENT_POLICIES = ("basic", "affine")  # edgederm.training.augment.POLICIES
RESIZE_POLICIES = ("letterbox", "center_crop")  # edgederm.core.preprocess.RESIZE_POLICIES
DECISION_RULES = ("balanced", "argmax")  # edgederm.metrics.decision.RULES
DEFAULT_TARGET_SENSITIVITY = 0.9  # edgederm.metrics.operating_point.DEFAULT_TARGET_SENSITIVITY
DEFAULT_SEGMENT_LR = {"tinyseg": 1e-2}  # a 0.04M-parameter net tolerates (and needs) a larger step; others 1e-3

RESUME_HELP = "continue an interrupted run from its last checkpoint"
DEVICE_HELP = "auto, cpu or cuda"
EXTRA_TRAIN_HELP = "more images that join the train split only, e.g. isic2017:DIR/train; val and test stay those of --data"
TEST_FRACTION_HELP = "hold out this share of lesions as a test split, evaluated at the end"
SKIP_TEST_HELP = (
    "hold the test split out but do not score it: for runs that compare recipes on validation, so that the test split "
    "is scored once, for the model kept"
)


def option(
    default: Any = MISSING,
    *,
    help: str | None = None,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
    cli: bool = True,
) -> Any:
    """A config field and its command-line argument; without a default the argument is required."""
    metadata = {"help": help, "choices": choices, "metavar": metavar, "cli": cli}
    return field(default=default, metadata=metadata)


@dataclass(kw_only=True)
class TrainConfig:
    """A classifier's recipe; fields are in the order ``edgederm train classify --help`` lists them."""

    data: str = option(help="training data: ham10000:DIR, isic2017:DIR, manifest:CSV, folder:DIR or synthetic:N[,seed=S]")
    val_data: str | None = option(None, help="a separate validation set (otherwise a grouped split of --data)")
    extra_train: str | None = option(None, metavar="SPEC", help=EXTRA_TRAIN_HELP)
    arch: str = option("efficientnet_lite0")
    img_size: int = option(224)
    epochs: int | None = option(None, help="default 30 for --mode head, 10 for full")
    mode: str = option("head", choices=MODES, help="head: linear probe on cached features (minutes on CPU); full: fine-tune everything")
    out: Path = option(help="run directory")
    batch_size: int | None = option(None)  # None: 256 for head, 32 for full
    lr: float | None = option(None)  # None: 3e-3 for head, 1e-3 for full
    weight_decay: float = option(1e-4)
    label_smoothing: float = option(0.1)
    weights: str = option(
        "default",
        help="'default' (the arch's pretrained weights if any), 'none', 'imagenet', 'timm' (needs internet) or a .safetensors/.pth path",
    )
    val_fraction: float = option(0.15)
    test_fraction: float = option(0.0, help=TEST_FRACTION_HELP)
    skip_test: bool = option(False, help=SKIP_TEST_HELP)
    balance: str = option("weighted_loss", choices=BALANCE)
    class_weight_power: float = option(0.5, help="class weight = (1/frequency)^power (1 = fully balanced)")
    resize: str = option("letterbox", choices=RESIZE_POLICIES)
    augment: str = option(
        "basic",
        choices=AUGMENT_POLICIES,
        help="--mode full: basic = flips, 90-degree turns, colour jitter; affine adds any angle, zoom and shift",
    )
    ema: float = option(
        0.0,
        metavar="DECAY",
        help="--mode full: validate and keep an exponential moving average of the weights (e.g. 0.999; 0 = off)",
    )
    init_from: str | None = option(
        None,
        metavar="RUN_DIR",
        help="start from a trained run's weights or zoo:NAME (same arch, size, classes and split), e.g. to fine-tune it with --qat",
    )
    qat: bool = option(
        False,
        help="--mode full: quantization-aware training through simulated int8 (fine-tune a run: --init-from RUN --epochs 3 --lr 1e-4)",
    )
    prune: float = option(
        0.0,
        metavar="SHARE",
        help="with --init-from: remove this share of each block's expansion channels (least important first), then "
        "fine-tune; e.g. --prune 0.4 --distill-from RUN",
    )
    distill_from: str | None = option(
        None,
        metavar="RUN_DIR",
        help="--mode full: a teacher run (or zoo:NAME) whose softened probabilities join the loss (knowledge distillation)",
    )
    distill_weight: float = option(0.5, help="share of the loss given to the teacher's soft labels")
    distill_temperature: float = option(2.0, help="softening temperature of the distillation loss")
    target_sensitivity: float = option(
        DEFAULT_TARGET_SENSITIVITY,
        help="the malignant-class referral threshold is set on validation data for this sensitivity (stored in the ModelSpec)",
    )
    decision: str = option(
        "balanced",
        choices=DECISION_RULES,
        help="how the named class is read from the probabilities: balanced = argmax of p / prior**tau, tau chosen on validation "
        "for balanced accuracy (probabilities unchanged); argmax = the most probable class",
    )
    min_sensitivity: str | None = option(
        None,
        metavar="CLASS=SENSITIVITY",
        help="after the decision rule, raise this class's offset until validation names it at this sensitivity (e.g. mel=0.75)",
    )
    seed: int = option(0)
    device: str = option("auto", help=DEVICE_HELP)
    amp: str = option("auto", choices=AMP, help="mixed precision (CUDA only)")
    resume: bool = option(False, help=RESUME_HELP)
    warmup_epochs: float | None = option(None, cli=False)  # None: 1 epoch, or 0.1 when fine-tuning a trained run (--init-from)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        # zoo:NAME becomes the entry's checkpoint folder here, so the split checks read its splits.csv
        self.init_from = None if self.init_from is None else str(zoo.resolve(self.init_from))
        self.distill_from = None if self.distill_from is None else str(zoo.resolve(self.distill_from))
        if self.mode not in MODES:
            raise UsageError(f"--mode must be one of {MODES}, got {self.mode!r}")
        if self.balance not in BALANCE:
            raise UsageError(f"--balance must be one of {BALANCE}, got {self.balance!r}")
        if self.decision not in DECISION_RULES:
            raise UsageError(f"--decision must be one of {DECISION_RULES}, got {self.decision!r}")
        if self.min_sensitivity is not None:
            parse_floor(self.min_sensitivity)
        if self.epochs is None:
            self.epochs = 30 if self.mode == "head" else 10
        if self.warmup_epochs is None:
            self.warmup_epochs = 0.1 if self.init_from else 1.0
        if self.batch_size is None:
            self.batch_size = 256 if self.mode == "head" else 32
        if self.lr is None:
            self.lr = 3e-3 if self.mode == "head" else 1e-3
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise UsageError("--epochs, --batch-size and --lr must be positive")
        check_fractions(self.val_fraction, self.test_fraction)
        if not 0.0 <= self.ema < 1.0:
            raise UsageError(f"--ema must be a decay in [0, 1), got {self.ema}")
        if self.augment not in AUGMENT_POLICIES:
            raise UsageError(f"--augment must be one of {AUGMENT_POLICIES}, got {self.augment!r}")
        if self.amp not in AMP:
            raise UsageError("--amp must be auto, on or off")
        if (self.qat or self.distill_from or self.ema) and self.mode != "full":
            raise UsageError("--qat, --distill-from and --ema train the whole network", fix="add --mode full")
        if self.qat and self.ema:
            raise UsageError("--qat keeps the fake-quantized weights it validates; it does not combine with --ema", fix="drop --ema")
        if self.prune:
            if not 0.0 < self.prune < 1.0:
                raise UsageError(f"--prune must be a share in (0, 1), got {self.prune}")
            if not self.init_from or self.mode != "full":
                raise UsageError("--prune shrinks a trained network, then fine-tunes it", fix="add --init-from RUN --mode full")
            if self.qat:
                raise UsageError("--prune and --qat in one run", fix="prune first, then fine-tune the pruned run with --init-from it --qat")
        if not 0.0 < self.distill_weight <= 1.0 or self.distill_temperature <= 0:
            raise UsageError("--distill-weight must be in (0, 1] and --distill-temperature positive")

    def recipe(self) -> dict[str, Any]:
        return recipe_of(self)


@dataclass(kw_only=True)
class SegmentConfig:
    """A segmenter's recipe; fields are in the order ``edgederm train segment --help`` lists them."""

    data: str = option(help="training data with masks: ham10000:DIR, isic2017:DIR, manifest:CSV (mask column) or synthetic:N")
    val_data: str | None = option(None, help="a separate validation set with masks (otherwise a grouped split of --data)")
    extra_train: str | None = option(None, metavar="SPEC", help=EXTRA_TRAIN_HELP)
    arch: str = option("mobilegan", help="mobilegan or tinyseg (see `edgederm models --task segmentation`)")
    img_size: int = option(128, help="input side; a multiple of 8 (mobilegan) or 32 (tinyseg)")
    epochs: int = option(30)
    adversarial: str = option("on", choices=ON_OFF, help="train against a conditional critic (MobileGAN); off: the ablation")
    adv_weight: float = option(0.1, help="weight of the adversarial loss (lambda)")
    out: Path = option(help="run directory")
    batch_size: int = option(16)
    lr: float | None = option(None, help="default 1e-3 (mobilegan), 1e-2 (tinyseg)")
    weight_decay: float = option(1e-4)
    val_fraction: float = option(0.15)
    test_fraction: float = option(0.0, help=TEST_FRACTION_HELP)
    skip_test: bool = option(False, help=SKIP_TEST_HELP)
    postprocess: str = option("on", choices=ON_OFF, help="keep the largest region and fill its holes (stored in the spec)")
    seed: int = option(0)
    device: str = option("auto", help=DEVICE_HELP)
    resume: bool = option(False, help=RESUME_HELP)
    warmup_epochs: float = option(1.0, cli=False)

    def __post_init__(self) -> None:
        from ..models import get_entry  # imports torch: only where a config is built, not for --help

        self.out = Path(self.out)
        entry = get_entry(self.arch)
        if entry.task != "segmentation":
            raise UsageError(f"--arch {self.arch} is a {entry.task} model", fix="choose a segmenter: mobilegan or tinyseg")
        if self.img_size % entry.input_multiple or not 16 <= self.img_size <= 2048:
            raise UsageError(
                f"--img-size {self.img_size} does not fit {self.arch}",
                fix=f"use a multiple of {entry.input_multiple} between 16 and 2048, e.g. 128",
            )
        if self.lr is None:
            self.lr = DEFAULT_SEGMENT_LR.get(self.arch, 1e-3)
        if self.adversarial not in ON_OFF or self.postprocess not in ON_OFF:
            raise UsageError("--adversarial and --postprocess must be on or off")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.adv_weight < 0:
            raise UsageError("--epochs, --batch-size and --lr must be positive and --adv-weight not negative")
        check_fractions(self.val_fraction, self.test_fraction)

    def recipe(self) -> dict[str, Any]:
        return recipe_of(self)


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not 0 <= test_fraction < 0.9 or not 0 <= val_fraction < 0.9:
        raise UsageError("--val-fraction and --test-fraction must be in [0, 0.9)")


def recipe_of(config: Any) -> dict[str, Any]:
    """A training config as plain values for the spec and the resume check (not resume)."""
    data = asdict(config)
    data["out"] = str(config.out)
    data.pop("resume")
    return data


def comparable_recipe(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe fields that must match for a resume (the output folder may have moved; scoring test changes no weights)."""
    return {k: v for k, v in recipe.items() if k not in ("out", "device", "epochs", "skip_test")}


def same_recipe(stored: dict[str, Any], current: dict[str, Any], config_type: Any) -> bool:
    """Whether a resume continues the stored recipe; a field added since that run matches at its default."""
    defaults = {f.name: f.default for f in fields(config_type)}
    return all(stored.get(key, defaults.get(key)) == value for key, value in current.items()) and set(stored) <= set(current)
