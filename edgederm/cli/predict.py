"""``edgederm predict`` and ``edgederm evaluate`` (and segment-then-classify with --segmenter and --classifier)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.errors import UsageError
from .parser import model_path


def add_parser(sub) -> None:
    for name, help_text, handler in (
        ("predict", "predict images or a dataset; writes OUT/predictions.csv", cmd_predict),
        ("evaluate", "score a model on labelled data; writes OUT/metrics.json and OUT/report.md", cmd_evaluate),
    ):
        p = sub.add_parser(name, help=help_text)
        if name == "predict":
            p.add_argument(
                "model",
                type=model_path,
                nargs="?",
                help="a run directory, zoo:NAME or exported artifact (or --segmenter with --classifier)",
            )
            _add_segment_classify(p)
        else:
            p.add_argument("model", type=model_path, help="a run directory, checkpoint or zoo:NAME")
        p.add_argument("images", nargs="*", help="image files or folders (instead of --data)")
        p.add_argument("--data", help="a dataset spec instead of image paths")
        p.add_argument("--split", choices=["train", "val", "test"], help="only this split of the model's splits.csv")
        p.add_argument("--splits", type=Path, help="a splits.csv (default: MODEL/splits.csv)")
        p.add_argument("--out", required=True, type=Path)
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--quiet", action="store_true", help="warnings and errors only: no progress bars")
        p.set_defaults(handler=handler)


def _add_segment_classify(p) -> None:
    p.add_argument(
        "--segmenter", type=model_path, help="segment first: crop each image around this segmenter's lesion (needs --classifier)"
    )
    p.add_argument("--classifier", type=model_path, help="classify the lesion crops with this classifier (needs --segmenter)")
    p.add_argument(
        "--crop-margin", type=float, help="with --segmenter: grow the lesion box by this share of its side on each side (default 0.2)"
    )
    p.add_argument("--save-masks", action="store_true", help="with --segmenter: also write OUT/masks/<image stem>.png")


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
