"""``edgederm train classify`` and ``edgederm train segment``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .parser import Parser


def add_parser(sub) -> None:
    train = sub.add_parser("train", help="train a model")
    tasks = train.add_subparsers(dest="task", required=True, parser_class=Parser)
    p = tasks.add_parser("classify", help="train a lesion classifier")
    p.add_argument(
        "--data", required=True, help="training data: ham10000:DIR, isic2017:DIR, manifest:CSV, folder:DIR or synthetic:N[,seed=S]"
    )
    p.add_argument("--val-data", help="a separate validation set (otherwise a grouped split of --data)")
    p.add_argument("--arch", default="efficientnet_lite0")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--epochs", type=int, help="default 30 for --mode head, 10 for full")
    p.add_argument(
        "--mode",
        choices=["head", "full"],
        default="head",
        help="head: linear probe on cached features (minutes on CPU); full: fine-tune everything",
    )
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument(
        "--weights",
        default="default",
        help="'default' (the arch's pretrained weights if any), 'none', 'imagenet', 'timm' (needs internet) or a .safetensors/.pth path",
    )
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.0, help="hold out this share of lesions as a test split, evaluated at the end")
    p.add_argument("--balance", choices=["weighted_loss", "none"], default="weighted_loss")
    p.add_argument("--class-weight-power", type=float, default=0.5, help="class weight = (1/frequency)^power (1 = fully balanced)")
    p.add_argument("--resize", choices=["letterbox", "center_crop"], default="letterbox")
    p.add_argument(
        "--augment",
        choices=["basic", "affine"],
        default="basic",
        help="--mode full: basic = flips, 90-degree turns, colour jitter; affine adds any angle, zoom and shift",
    )
    p.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="--mode full: validate and keep an exponential moving average of the weights (e.g. 0.999; 0 = off)",
    )
    p.add_argument(
        "--init-from",
        metavar="RUN_DIR",
        help="start from a trained run's weights (same arch, size, classes and split), e.g. to fine-tune it with --qat",
    )
    p.add_argument(
        "--qat",
        action="store_true",
        help="--mode full: quantization-aware training through simulated int8 (fine-tune a run: --init-from RUN --epochs 3 --lr 1e-4)",
    )
    p.add_argument(
        "--prune",
        type=float,
        default=0.0,
        metavar="SHARE",
        help="with --init-from: remove this share of each block's expansion channels (least important first), then "
        "fine-tune; e.g. --prune 0.4 --distill-from RUN",
    )
    p.add_argument(
        "--distill-from",
        metavar="RUN_DIR",
        help="--mode full: a teacher run whose softened probabilities join the loss (knowledge distillation)",
    )
    p.add_argument("--distill-weight", type=float, default=0.5, help="share of the loss given to the teacher's soft labels")
    p.add_argument("--distill-temperature", type=float, default=2.0, help="softening temperature of the distillation loss")
    p.add_argument(
        "--target-sensitivity",
        type=float,
        default=0.9,
        help="the malignant-class referral threshold is set on validation data for this sensitivity (stored in the ModelSpec)",
    )
    p.add_argument(
        "--decision",
        choices=["balanced", "argmax"],
        default="balanced",
        help="how the named class is read from the probabilities: balanced = argmax of p / prior**tau, tau chosen on validation "
        "for balanced accuracy (probabilities unchanged); argmax = the most probable class",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto", help="mixed precision (CUDA only)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="warnings and errors only: no progress bars")
    p.set_defaults(handler=cmd_train_classify)
    _add_train_segment(tasks)


def _add_train_segment(tasks) -> None:
    p = tasks.add_parser("segment", help="train a lesion segmenter (needs a mask per image)")
    p.add_argument(
        "--data", required=True, help="training data with masks: ham10000:DIR, isic2017:DIR, manifest:CSV (mask column) or synthetic:N"
    )
    p.add_argument("--val-data", help="a separate validation set with masks (otherwise a grouped split of --data)")
    p.add_argument("--arch", default="mobilegan", help="mobilegan or tinyseg (see `edgederm models --task segmentation`)")
    p.add_argument("--img-size", type=int, default=128, help="input side; a multiple of 8 (mobilegan) or 32 (tinyseg)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument(
        "--adversarial", choices=["on", "off"], default="on", help="train against a conditional critic (MobileGAN); off: the ablation"
    )
    p.add_argument("--adv-weight", type=float, default=0.1, help="weight of the adversarial loss (lambda)")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, help="default 1e-3 (mobilegan), 1e-2 (tinyseg)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--test-fraction", type=float, default=0.0, help="hold out this share of lesions as a test split, evaluated at the end")
    p.add_argument(
        "--postprocess", choices=["on", "off"], default="on", help="keep the largest region and fill its holes (stored in the spec)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="warnings and errors only: no progress bars")
    p.set_defaults(handler=cmd_train_segment)


def cmd_train_classify(args: argparse.Namespace) -> int:
    from ..training.classification import TrainConfig, train_classifier

    config = TrainConfig(
        data=args.data,
        val_data=args.val_data,
        arch=args.arch,
        img_size=args.img_size,
        epochs=args.epochs,
        mode=args.mode,
        out=args.out,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        weights=args.weights,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        balance=args.balance,
        class_weight_power=args.class_weight_power,
        resize=args.resize,
        augment=args.augment,
        ema=args.ema,
        init_from=args.init_from,
        qat=args.qat,
        prune=args.prune,
        distill_from=args.distill_from,
        distill_weight=args.distill_weight,
        distill_temperature=args.distill_temperature,
        target_sensitivity=args.target_sensitivity,
        decision=args.decision,
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        resume=args.resume,
    )
    train_classifier(config)
    return 0


def cmd_train_segment(args: argparse.Namespace) -> int:
    from ..training.segmentation import SegmentConfig, train_segmenter

    config = SegmentConfig(
        data=args.data,
        val_data=args.val_data,
        arch=args.arch,
        img_size=args.img_size,
        epochs=args.epochs,
        adversarial=args.adversarial,
        adv_weight=args.adv_weight,
        out=args.out,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        val_fraction=args.val_fraction,
        test_fraction=args.test_fraction,
        postprocess=args.postprocess,
        seed=args.seed,
        device=args.device,
        resume=args.resume,
    )
    train_segmenter(config)
    return 0
