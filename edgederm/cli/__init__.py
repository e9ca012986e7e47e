"""The ``edgederm`` command line.

Every user error exits non-zero with exactly one line on stderr; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .. import __version__
from ..core.errors import EdgedermError, UsageError
from ..core.log import configure


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own errors become one line too
        raise UsageError(message, fix=f"see `{self.prog} --help`")


def _add_models(sub) -> None:
    p = sub.add_parser("models", help="list the registered models with task, params and MACs")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--task", choices=["classification", "segmentation"])
    p.add_argument("--num-classes", type=int, default=7, help="head size used for the counts (default 7, HAM10000)")
    p.set_defaults(handler=cmd_models)


def _add_train(sub) -> None:
    train = sub.add_parser("train", help="train a model")
    tasks = train.add_subparsers(dest="task", required=True, parser_class=_Parser)
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


def _add_predict(sub) -> None:
    for name, help_text, handler in (
        ("predict", "predict images or a dataset; writes OUT/predictions.csv", cmd_predict),
        ("evaluate", "score a model on labelled data; writes OUT/metrics.json and OUT/report.md", cmd_evaluate),
    ):
        p = sub.add_parser(name, help=help_text)
        if name == "predict":
            p.add_argument("model", type=Path, nargs="?", help="a run directory or exported artifact (or --segmenter with --classifier)")
            _add_segment_classify(p)
        else:
            p.add_argument("model", type=Path, help="a run directory or checkpoint")
        p.add_argument("images", nargs="*", help="image files or folders (instead of --data)")
        p.add_argument("--data", help="a dataset spec instead of image paths")
        p.add_argument("--split", choices=["train", "val", "test"], help="only this split of the model's splits.csv")
        p.add_argument("--splits", type=Path, help="a splits.csv (default: MODEL/splits.csv)")
        p.add_argument("--out", required=True, type=Path)
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--quiet", action="store_true", help="warnings and errors only: no progress bars")
        p.set_defaults(handler=handler)


def _add_segment_classify(p) -> None:
    p.add_argument("--segmenter", type=Path, help="segment first: crop each image around this segmenter's lesion (needs --classifier)")
    p.add_argument("--classifier", type=Path, help="classify the lesion crops with this classifier (needs --segmenter)")
    p.add_argument(
        "--crop-margin", type=float, help="with --segmenter: grow the lesion box by this share of its side on each side (default 0.2)"
    )
    p.add_argument("--save-masks", action="store_true", help="with --segmenter: also write OUT/masks/<image stem>.png")


def _add_export(sub) -> None:
    from ..core.formats import FORMATS, QUANT_MODES

    p = sub.add_parser("export", help="export a run to TFLite / ONNX / CoreML artifacts + manifest.json")
    p.add_argument("run_dir", type=Path, help="a run directory (model.safetensors + spec.json)")
    p.add_argument("--formats", default=",".join(FORMATS), help=f"comma-separated, from {', '.join(FORMATS)}")
    p.add_argument("--quant", default="fp32,fp16,int8", help=f"comma-separated, from {', '.join(QUANT_MODES)}")
    p.add_argument("--calib-data", help="representative images for int8 (default: the train split of the run's training data)")
    p.add_argument("--calib-n", type=int, default=300)
    p.add_argument(
        "--max-drop",
        type=float,
        default=0.01,
        help="int8-aa: largest share of calibration images whose top-1 may differ from fp32 (default 0.01)",
    )
    p.add_argument(
        "--max-size",
        type=float,
        default=0.3,
        help="int8-aa: largest file size as a share of fp32, which limits the layers kept float (default 0.3)",
    )
    p.add_argument("--nchw", action="store_true", help="TFLite: keep NCHW input instead of the phone-friendly NHWC")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--quiet", action="store_true", help="warnings and errors only: no progress bars")
    p.set_defaults(handler=cmd_export)


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="run every exported artifact against the torch fp32 model: metrics, agreement, latency, status")
    p.add_argument("export_dir", type=Path, help="an export directory with manifest.json")
    p.add_argument("--data", required=True, help="labelled images to verify on (a dataset spec)")
    p.add_argument("--split", choices=["train", "val", "test"], help="only this split of the source run's splits.csv")
    p.add_argument("--reference", type=Path, help="the run directory the export came from (default: the manifest's source)")
    p.add_argument("--max-drop", type=float, default=0.01, help="largest allowed drop of the headline metric (balanced accuracy)")
    p.add_argument("--guard", action="append", default=[], metavar="METRIC=MAX_DROP", help="e.g. mel_sensitivity=0.02 (repeatable)")
    p.add_argument("--threads", default="1", help="comma-separated thread counts for latency, e.g. 1,2")
    p.add_argument("--runs", type=int, default=50, help="timed runs per artifact and thread count (after warm-up)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--saliency", type=int, default=64, help="Grad-CAM of the reference on this many images with lesion masks (0: off)")
    p.add_argument("--no-emulate-coreml", action="store_true", help="leave CoreML unverified off Apple platforms instead of emulating it")
    p.add_argument("--device-results", type=Path, nargs="+", default=[], help="latency files from the demo app on a phone")
    p.add_argument("--json", type=Path, help="write the results here (default EXPORT_DIR/verify.json)")
    p.add_argument("--report", type=Path, help="write verify.md + verify.html + plots here (default EXPORT_DIR/verify)")
    p.add_argument("--quiet", action="store_true", help="warnings and errors only: no progress bars")
    p.set_defaults(handler=cmd_verify)


def _add_operating_point(sub) -> None:
    p = sub.add_parser("operating-point", help="set a classifier's referral threshold for a target sensitivity (stored in spec.json)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--data", required=True, help="labelled data, normally the run's own --data with --split val")
    p.add_argument("--split", choices=["train", "val", "test"], help="a split of the run's splits.csv (use val; never test)")
    p.add_argument("--target-sensitivity", type=float, default=0.9)
    p.add_argument("--quiet", action="store_true", help="warnings and errors only: no progress bars")
    p.set_defaults(handler=cmd_operating_point)


def _add_decision(sub) -> None:
    p = sub.add_parser(
        "decision", help="choose how a classifier names the class (balanced or argmax) on validation data (stored in spec.json)"
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--data", help="labelled data, normally the run's own --data with --split val (not needed for --rule argmax)")
    p.add_argument("--split", choices=["train", "val", "test"], help="a split of the run's splits.csv (use val; never test)")
    p.add_argument("--rule", choices=["balanced", "argmax"], default="balanced")
    p.add_argument("--quiet", action="store_true", help="warnings and errors only: no progress bars")
    p.set_defaults(handler=cmd_decision)


def _add_quickstart(sub) -> None:
    p = sub.add_parser("quickstart", help="the embedded default: synthetic data -> train -> evaluate -> predict -> report, offline")
    p.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    p.add_argument("--n", type=int, default=480, help="number of synthetic images")
    p.add_argument("--arch", default="efficientnet_lite0")
    p.add_argument("--img-size", type=int, default=160)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="warnings and errors only: no progress bars")
    p.set_defaults(handler=cmd_quickstart)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edgederm", description="Skin-lesion models from a training run to a phone.")
    parser.add_argument("--version", action="version", version=f"edgederm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_models(sub)
    _add_train(sub)
    _add_predict(sub)
    _add_export(sub)
    _add_verify(sub)
    _add_operating_point(sub)
    _add_decision(sub)
    _add_quickstart(sub)
    return parser


# ----------------------------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    from ..models import count_macs, count_parameters, create_model, get_entry, list_models

    rows = []
    for name in list_models(task=args.task):
        entry = get_entry(name)
        model = create_model(name, 1 if entry.task == "segmentation" else args.num_classes)
        rows.append(
            {
                "name": name,
                "task": entry.task,
                "family": entry.family,
                "params": count_parameters(model),
                "macs": count_macs(model, entry.default_input_size),
                "input_size": entry.default_input_size,
                "weights": sorted(entry.weights),
                "description": entry.description,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':24} {'task':15} {'params':>9} {'MACs':>9} {'input':>6}  weights")
    for row in rows:
        print(
            f"{row['name']:24} {row['task']:15} {row['params'] / 1e6:8.2f}M {row['macs'] / 1e6:8.1f}M {row['input_size']:>6}  {', '.join(row['weights']) or '-'}"
        )
    return 0


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


def _predictions(args: argparse.Namespace):
    """Class probabilities, or for a segmenter its masks (written to OUT/masks/ as they come)."""
    from ..data.selection import resolve_inputs
    from ..evaluate.predict import run_predictor, run_segmenter
    from ..runtime import Predictor

    predictor = Predictor.load(args.model)  # a bad model fails before any image is read
    splits = args.splits or (args.model / "splits.csv" if args.model.is_dir() else None)
    dataset = resolve_inputs(args.data, args.images, args.split, splits)
    if predictor.spec.task == "segmentation":
        score = args.command == "evaluate"
        return run_segmenter(predictor, dataset, args.out, args.batch_size, score=score)
    return run_predictor(predictor, dataset, args.batch_size)


def _looks_like_model(path: Path) -> bool:
    from ..core.formats import format_for_path

    return (path / "spec.json").is_file() or format_for_path(path.name) is not None or path.suffix == ".safetensors"


def _segment_classify_mode(args: argparse.Namespace) -> bool:
    """True for --segmenter + --classifier; a positional MODEL is then the first image. Wrong mixes are one-line usage errors."""
    if args.segmenter is None and args.classifier is None:
        if args.crop_margin is not None or args.save_masks:
            raise UsageError("--crop-margin and --save-masks need --segmenter and --classifier")
        if args.model is None:
            raise UsageError("give a MODEL, or --segmenter SEG --classifier CLS", fix="see `edgederm predict --help`")
        return False
    if args.segmenter is None or args.classifier is None:
        raise UsageError("--segmenter and --classifier go together", fix="give both, or a single positional MODEL")
    if args.model is not None:
        if _looks_like_model(args.model):
            raise UsageError(f"give either MODEL ({args.model}) or --segmenter and --classifier, not both")
        args.images.insert(0, str(args.model))
        args.model = None
    if args.crop_margin is None:
        from ..evaluate.segment_classify import DEFAULT_CROP_MARGIN

        args.crop_margin = DEFAULT_CROP_MARGIN
    if not 0 <= args.crop_margin <= 5:
        raise UsageError(
            f"--crop-margin {args.crop_margin:g} is out of range", fix="use a share of the lesion box side in [0, 5], e.g. 0.2"
        )
    return True


def _predict_segment_classify(args: argparse.Namespace) -> int:
    from ..data.selection import resolve_inputs
    from ..evaluate.segment_classify import CROP_WHOLE_IMAGE, check_tasks, run_segment_classify, write_crop_predictions_csv
    from ..runtime import Predictor

    segmenter, classifier = Predictor.load(args.segmenter), Predictor.load(args.classifier)
    check_tasks(segmenter, classifier)  # before any image is read
    splits = args.splits or (args.classifier / "splits.csv" if args.classifier.is_dir() else None)
    dataset = resolve_inputs(args.data, args.images, args.split, splits)
    args.out.mkdir(parents=True, exist_ok=True)
    result = run_segment_classify(
        segmenter,
        classifier,
        dataset,
        margin=args.crop_margin,
        batch_size=args.batch_size,
        masks_to=args.out if args.save_masks else None,
    )
    write_crop_predictions_csv(result, args.out / "predictions.csv")
    failed = int((~result.predictions.ok).sum())
    whole = sum(source == CROP_WHOLE_IMAGE for source in result.crop_sources)
    print(
        f"wrote {args.out / 'predictions.csv'} ({len(dataset) - failed} predicted, {whole} of them on the whole image "
        f"because the mask was empty, {failed} unreadable)",
        file=sys.stderr,
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ..evaluate.predict import MaskPredictions, write_mask_predictions_csv, write_predictions_csv

    if _segment_classify_mode(args):
        return _predict_segment_classify(args)
    predictions = _predictions(args)
    args.out.mkdir(parents=True, exist_ok=True)
    if isinstance(predictions, MaskPredictions):
        write_mask_predictions_csv(predictions, args.out / "predictions.csv")
        failed = int((~predictions.ok).sum())
        print(
            f"wrote {args.out / 'predictions.csv'} and {len(predictions.errors) - failed} masks in {args.out / 'masks'} ({failed} unreadable)",
            file=sys.stderr,
        )
        return 0
    write_predictions_csv(predictions, args.out / "predictions.csv")
    failed = int((~predictions.ok).sum())
    print(f"wrote {args.out / 'predictions.csv'} ({len(predictions.errors) - failed} predicted, {failed} unreadable)", file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..evaluate.evaluation import evaluate_and_report, evaluate_segmentation
    from ..evaluate.predict import MaskPredictions

    predictions = _predictions(args)
    if isinstance(predictions, MaskPredictions):
        report = evaluate_segmentation(predictions, args.out, model=args.model)
        print(f"wrote {report}", file=sys.stderr)
        return 0
    report = evaluate_and_report(predictions, args.out, model=args.model)
    print(f"wrote {report}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ..core.formats import parse_formats, parse_quant_modes
    from ..export import export_run

    formats, quants = parse_formats(args.formats), parse_quant_modes(args.quant)
    if args.calib_n < 1:
        raise UsageError("--calib-n must be at least 1")
    if not 0 < args.max_size <= 1:
        raise UsageError(f"--max-size {args.max_size:g} is not a share of the fp32 size", fix="pass a value in (0, 1], e.g. 0.3")
    records = export_run(
        args.run_dir,
        formats,
        quants,
        args.out,
        calib_data=args.calib_data,
        calib_n=args.calib_n,
        options={"nhwc": not args.nchw, "max_drop": args.max_drop, "max_size": args.max_size},
    )
    print(f"{'format':8} {'quant':13} {'status':8} {'size':>10} {'seconds':>8}  path / message")
    for r in records:
        size = f"{r.size / 1e6:.2f} MB" if r.size else ""
        print(f"{r.format:8} {r.quant:13} {r.status:8} {size:>10} {r.seconds or '':>8}  {r.path or r.message}")
    failed = [r for r in records if r.status == "failed"]
    return 1 if failed else 0


def _thread_counts(text: str) -> list[int]:
    try:
        counts = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise UsageError(f"--threads {text!r} is not a list of positive integers", fix="e.g. --threads 1,2")
    return list(dict.fromkeys(counts))


def cmd_verify(args: argparse.Namespace) -> int:
    from ..core.spec import ModelSpec
    from ..evaluate.verify.device_results import read_device_results
    from ..evaluate.verify.guards import parse_guard
    from ..evaluate.verify.report import write_json, write_report
    from ..evaluate.verify.runner import VerifyOptions, exit_code, verify_export

    if args.runs < 1 or args.warmup < 0:
        raise UsageError("--runs must be >= 1 and --warmup >= 0")
    options = VerifyOptions(
        data=args.data,
        split=args.split,
        max_drop=args.max_drop,
        guards=[parse_guard(g) for g in args.guard],
        threads=_thread_counts(args.threads),
        runs=args.runs,
        warmup=args.warmup,
        reference=args.reference,
        emulate_coreml=not args.no_emulate_coreml,
        saliency_images=args.saliency,
    )
    devices = [read_device_results(p) for p in args.device_results]  # a bad file fails before the long run
    result = verify_export(args.export_dir, options)
    result["device_results"] = devices
    json_path = args.json or args.export_dir / "verify.json"
    write_json(result, json_path)
    spec = ModelSpec.load(Path(result["reference"]["name"]) / "spec.json")
    markdown, html = write_report(result, spec, args.report or args.export_dir / "verify")
    for a in result["artifacts"]:
        agree = a.get("agreement") or {}
        share = f"{'top-1' if 'top1' in agree else 'mask IoU'} {agree.get('top1', agree.get('mask_iou')):.1%}" if agree else ""
        headline = (a.get("metrics") or {}).get(result["headline_metric"])
        score = "" if headline is None else f"{result['headline_metric']} {headline:.3f}"
        print(
            f"{a['status']:10} {a['format'] or '':7} {a['quant'] or '':13} {share:16} {score:26} {'; '.join(a['checks']) or a['message']}"
        )

    print(f"wrote {json_path}, {markdown}, {html}", file=sys.stderr)
    return exit_code(result)


def cmd_operating_point(args: argparse.Namespace) -> int:
    from ..evaluate.tuning import set_operating_point

    if not 0 < args.target_sensitivity <= 1:
        raise UsageError("--target-sensitivity must be in (0, 1]")
    point = set_operating_point(args.run_dir, args.data, args.split, args.target_sensitivity)
    print(
        f"refer when {'+'.join(point['classes'])} >= {point['threshold']:.4f}: sensitivity {point['sensitivity']:.3f}, "
        f"specificity {point['specificity']:.3f} on {point['chosen_on']} ({point['n_malignant']} malignant, {point['n_benign']} benign)"
    )
    return 0


def cmd_decision(args: argparse.Namespace) -> int:
    from ..evaluate.tuning import set_decision
    from ..runtime.readout import describe

    if args.rule == "balanced" and not args.data:
        raise UsageError("--rule balanced is chosen on labelled data", fix="add --data SPEC --split val")
    decision = set_decision(args.run_dir, args.data, args.split, args.rule)
    if decision:
        scores = decision["balanced_accuracy"]
        print(
            f"decision: {describe(decision)}; balanced accuracy {scores['argmax']:.3f} (argmax) -> {scores['balanced']:.3f} on {decision['n']} images"
        )
    else:
        print("decision: argmax" + (" (the balanced rule did not beat it on this data)" if args.rule == "balanced" else ""))
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from ..cli.quickstart import quickstart

    _, verdict = quickstart(args.out, n=args.n, arch=args.arch, img_size=args.img_size, seed=args.seed)
    return verdict


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        # argparse cannot take positional images after an option (`predict RUN --data X a.jpg`).
        if extra and hasattr(args, "images") and not any(e.startswith("-") for e in extra):
            args.images += extra
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        configure(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
        return int(args.handler(args) or 0)
    except EdgedermError as error:
        if debug:
            raise
        print(f"edgederm: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("edgederm: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if debug:
            raise
        first = str(error).splitlines()[0] if str(error) else ""
        print(f"edgederm: internal error: {type(error).__name__}: {first} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
