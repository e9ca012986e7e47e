"""Build the model zoo (edgederm/zoo/NAME/) from trained runs: weights, phone artifact, numerics and perf.

    python benchmarks/zoo.py train NAME [NAME ...]     # train the recipe of each entry (or stage) into runs/zoo/NAME
    python benchmarks/zoo.py build NAME [NAME ...]     # pack runs/zoo/NAME into edgederm/zoo/NAME and measure it
    python benchmarks/zoo.py refresh NAME [NAME ...]   # re-export and re-measure the shipped weights of edgederm/zoo/NAME
    python benchmarks/zoo.py table                     # rewrite benchmarks/results/zoo.{json,md} from the entries

``build`` stores the weights in float16, or float32 where float16 changed a classifier's named class
on a test image or put a segmenter's mean mask IoU with the float32 run below 0.999 (the check is in
numerics.json). The two pruned students stay float16 though it moves a few of their named classes
(their ``storage`` check): float32 would take the zoo over its 40 MB budget, and every figure in
their numerics.json is measured on the float16 weights that ship. It also packs the
run's lesion-disjoint splits.csv, the int8 TFLite artifact that the demo app embeds, and after
Qualcomm AI Hub's model cards:

- ``numerics.json``: task metrics with 95% intervals (bootstrap over lesions, 1000 resamples) for
  torch fp32 and every TFLite and ONNX artifact (fp32, fp16, int8, int8-dynamic), on the entry's
  test split and on an external set from another source, with deltas and agreement against torch;
- ``perf.json``: file size, load time, latency median and p90 at 1 and 2 threads and peak memory,
  measured by ``edgederm-bench`` (the device bench) on this machine;
- ``card.json``: what the entry is, its training data and license, and the sha256 of every file.

``refresh`` is ``build`` from the entry's own shipped weights, for when a converter or a runtime
changes: the weights, spec and splits stay byte for byte, the phone artifact, numerics and perf are
made again, and the ``storage`` check is the one measured when the weights were packed from their run.

Training data stays outside the repository; only weights (which inherit the data's license) ship.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _machine import training_machine, where
from _results import command_line

from edgederm.core.log import configure, get_logger
from edgederm.runtime.readout import describe

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
RUNS = REPO / "runs" / "zoo"
ZOO = REPO / "edgederm" / "zoo"
RESULTS = REPO / "benchmarks" / "results"
QUANTS = ("fp32", "fp16", "int8", "int8-dynamic")
PERF_THREADS = "1,2"
HAM_LICENSE = "CC BY-NC 4.0 (HAM10000, Tschandl et al. 2018): non-commercial use only"
ISIC_LICENSE = "CC-0 (ISIC 2017 Challenge, Codella et al. 2017)"
logger = get_logger("benchmarks.zoo")


@dataclass(frozen=True)
class Recipe:
    name: str
    task: str
    description: str
    data: str  # what it trains on, for the card
    license: str
    train: tuple[str, ...]  # the command after `python`, with {runs} {shared} {out} filled in
    test: str  # dataset spec scored with the run's test split
    external: str  # dataset spec from another source, scored whole
    external_note: str
    needs: tuple[str, ...] = ()  # entries whose runs this recipe starts from
    storage: str = "float16"  # float32 where float16 changed a named class (or mask IoU < 0.999) on the test images
    shipped: bool = True  # False: a training stage that other recipes start from, trained but never packed


HAM = "ham10000:{shared}/ham10000"
ISIC_TRAIN, ISIC_VAL = "isic2017:{shared}/isic2017/train", "isic2017:{shared}/isic2017/val"
HAM_CLASSIFIER = {
    "task": "classification",
    "data": "HAM10000 lesion-disjoint train split (70%)",
    "license": HAM_LICENSE,
    "test": HAM,
    "external": ISIC_VAL,
    "external_note": "ISIC 2017 val (another source): melanoma, seborrheic keratosis (bkl) and naevus only",
}
ISIC_SEGMENTER = {
    "task": "segmentation",
    "data": "ISIC 2017 train (85%; official val for model selection)",
    "license": ISIC_LICENSE,
    "test": ISIC_TRAIN,
    "external": HAM,
    "external_note": "HAM10000 lesion masks (another source): the images of lite0-ham10000's test split",
}
# the reference's split (seed 0, 15% val, 15% test lesions) and regularisation, so its students share its test split
CLASSIFY = f"-m edgederm train classify --data {HAM} --mode full --augment affine --test-fraction 0.15 --weight-decay 0.01 --min-sensitivity mel=0.75"
SEGMENT = f"-m edgederm train segment --data {ISIC_TRAIN} --val-data {ISIC_VAL} --test-fraction 0.15 --adversarial off"


def command(text: str) -> tuple[str, ...]:
    """A training command's arguments; the {placeholders} are filled per argument, so paths may hold spaces."""
    return tuple(text.split())


RECIPES = {
    r.name: r
    for r in (
        Recipe(
            "lite0-ham10000-base",
            description="EfficientNet-Lite0 trained on HAM10000 alone: the stage that lite0-ham10000 and its students start from",
            # the gpu preset: about 4 minutes on one H100 or H200
            train=command("benchmarks/train_reference.py --preset gpu --out {out} --results-name classifier_ham10000"),
            shipped=False,
            **HAM_CLASSIFIER,
        ),
        Recipe(
            "lite0-ham10000",
            description=(
                "EfficientNet-Lite0 reference classifier, 7 HAM10000 classes, fine-tuned with ISIC 2017 train added; "
                "balanced decision rule with a melanoma floor, and a referral operating point"
            ),
            # about 27 minutes on a 2-core CPU; the weight average keeps the epoch of best validation balanced accuracy
            train=command(
                f"{CLASSIFY} --init-from {{runs}}/lite0-ham10000-base --epochs 4 --lr 1e-4 --label-smoothing 0.1 --ema 0.999 "
                f"--extra-train {ISIC_TRAIN} --skip-test --out {{out}}"
            ),
            needs=("lite0-ham10000-base",),
            storage="float32",  # float16 storage changed the named class of 1 of 1275 test images (the HAM10000-only stage)
            **{
                **HAM_CLASSIFIER,
                "data": "HAM10000 lesion-disjoint train split (70%) and ISIC 2017 train (2,000 images: mel, nv, and seborrheic keratosis as bkl)",
                "license": f"{HAM_LICENSE}; its ISIC 2017 part is CC-0",
                "external_note": (
                    "ISIC 2017 val: melanoma, seborrheic keratosis (bkl) and naevus only; lesions this entry never trained on, "
                    "from the source of its ISIC 2017 train images"
                ),
            },
        ),
        Recipe(
            "lite0-ham10000-p50",
            description="lite0-ham10000's HAM10000-only training stage with half of every block's expansion channels pruned, then fine-tuned with distillation from it",
            train=command(
                f"{CLASSIFY} --img-size 224 --batch-size 32 --lr 3e-4 --init-from {{runs}}/lite0-ham10000-base --prune 0.5 --distill-from {{runs}}/lite0-ham10000-base --epochs 6 --out {{out}}"
            ),
            needs=("lite0-ham10000-base",),
            **HAM_CLASSIFIER,  # float16 storage changes the named class of a few test images (see the docstring)
        ),
        Recipe(
            "lite0-ham10000-s64",
            description="lite0-ham10000's HAM10000-only training stage with half of every block's expansion channels pruned, fine-tuned at 64 px with distillation from it: the student for slow phones",
            train=command(
                f"{CLASSIFY} --img-size 64 --batch-size 64 --lr 5e-4 --init-from {{runs}}/lite0-ham10000-base --prune 0.5 --distill-from {{runs}}/lite0-ham10000-base --epochs 20 --ema 0.998 --out {{out}}"
            ),
            needs=("lite0-ham10000-base",),
            **HAM_CLASSIFIER,  # float16 storage changes the named class of a few test images (see the docstring)
        ),
        Recipe(
            "tinyseg-isic2017",
            description="tinyseg lesion segmenter (42k parameters) at 128 px",
            train=command(f"{SEGMENT} --arch tinyseg --img-size 128 --epochs 20 --out {{out}}"),
            **ISIC_SEGMENTER,
        ),
        Recipe(
            "tinyseg-isic2017-ham10000",
            description="tinyseg lesion segmenter (42k parameters) at 256 px, trained on ISIC 2017 and HAM10000 masks",
            train=command(
                f"{SEGMENT} --arch tinyseg --img-size 256 --epochs 12 --extra-train {HAM},train_of=zoo:lite0-ham10000 --skip-test --out {{out}}"
            ),
            **{
                **ISIC_SEGMENTER,
                "data": "ISIC 2017 train (85%) and the HAM10000 masks of lite0-ham10000's train lesions; official ISIC 2017 val for model selection",
                "license": f"{HAM_LICENSE}; its ISIC 2017 part is CC-0",
                "external_note": "HAM10000 lesion masks: the images of lite0-ham10000's test split, lesions this entry never trained on",
            },
        ),
        Recipe(
            "mobilegan-isic2017",
            description="MobileGAN-style U-Net segmenter (MobileNetV2 encoder) at 128 px",
            train=command(f"{SEGMENT} --arch mobilegan --img-size 128 --epochs 8 --out {{out}}"),
            **ISIC_SEGMENTER,
        ),
    )
}


def fill(text: str, out: Path, runs: Path, shared: Path) -> str:
    return text.format(out=out, runs=runs, shared=shared)


# -- train --------------------------------------------------------------------------------------


def train(recipe: Recipe, runs: Path, shared: Path) -> None:
    out = runs / recipe.name
    for needed in recipe.needs:
        if not (runs / needed / "model.safetensors").is_file():
            raise SystemExit(f"{recipe.name} starts from {needed}: train that first")
    command = [sys.executable, *(fill(part, out, runs, shared) for part in recipe.train)]
    if (out / "last_state.pt").is_file():
        command.append("--resume")
    logger.info("$ " + " ".join(command))
    subprocess.run(command, cwd=REPO, check=True)


# -- build --------------------------------------------------------------------------------------


def pack(run: Path, entry: Path, storage: str) -> None:
    """The weights (float16 or float32) + the spec (its sha256 updated) + splits.csv into the entry folder."""
    import torch
    from safetensors.torch import load_file, save_file

    from edgederm.core import atomic
    from edgederm.core.manifest import artifact_sha256
    from edgederm.core.spec import ModelSpec

    entry.mkdir(parents=True, exist_ok=True)
    state = load_file(str(run / "model.safetensors"))
    dtype = {"float16": torch.float16, "float32": torch.float32}[storage]
    stored = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    atomic.write_with(entry / "model.safetensors", lambda tmp: save_file(stored, str(tmp), metadata={"edgederm_storage": storage}))
    spec = ModelSpec.load(run / "spec.json")
    spec.source_sha256 = artifact_sha256(entry / "model.safetensors")
    atomic.write_text(entry / "spec.json", spec.to_json())
    shutil.copyfile(run / "splits.csv", entry / "splits.csv")


def _dataset(spec_text: str, split_from: Path | None):
    from edgederm.data.layouts import load_dataset
    from edgederm.data.selection import select_split

    dataset = load_dataset(spec_text)
    return select_split(dataset, "test", split_from / "splits.csv") if split_from else dataset


def _scored(spec, dataset, label: str):
    """Pixels and truth of a dataset for this spec (a classifier's external set keeps the classes it shares)."""
    from edgederm.data.pixels import load_pixels
    from edgederm.evaluate.verify.scoring import load_truth

    if spec.task == "classification":
        keep = [i for i, s in enumerate(dataset.samples) if s.label in spec.class_names]
        dataset = dataset.subset(keep)
    cache = load_pixels(dataset, spec.preprocess, desc=f"{label} images")
    return cache, load_truth(spec, dataset, cache), [dataset.samples[i].group for i in cache.kept]


def _per_image_segmentation(spec, truth, probs) -> dict[str, np.ndarray]:
    from edgederm.evaluate.verify.scoring import masks_of
    from edgederm.metrics import segmentation_metrics

    rows = [segmentation_metrics([t], [p]).to_dict() for t, p in zip(truth.masks, masks_of(spec, truth, probs), strict=True)]
    return {k: np.array([r[k] for r in rows], float) for k in ("jaccard", "dice", "pixel_accuracy")}


def _intervals(spec, truth, probs, groups) -> dict[str, list[float]]:
    from edgederm.evaluate.verify.scoring import Truth, score
    from edgederm.metrics.intervals import bootstrap_intervals

    if spec.task == "segmentation":
        per_image = _per_image_segmentation(spec, truth, probs)
        return bootstrap_intervals(lambda idx: {k: float(v[idx].mean()) for k, v in per_image.items()}, groups)
    wanted = ("accuracy", "balanced_accuracy", "macro_auc", "mel_sensitivity", "op_sensitivity", "op_specificity", "mel_vs_nv_auc", *ARGMAX)

    def statistic(idx: np.ndarray) -> dict[str, float | None]:
        scored = {
            **score(spec, Truth(labels=truth.labels[idx]), probs[idx]),
            "mel_vs_nv_auc": _mel_vs_nv_auc(spec, truth.labels[idx], probs[idx]),
        }
        return {k: scored.get(k) for k in wanted}

    return bootstrap_intervals(statistic, groups)


def _mel_vs_nv_auc(spec, labels: np.ndarray, probs: np.ndarray) -> float | None:
    from edgederm.metrics import roc_auc

    if not {"mel", "nv"} <= set(spec.class_names):
        return None
    mel, nv = spec.class_names.index("mel"), spec.class_names.index("nv")
    keep = (labels == mel) | (labels == nv)
    return roc_auc((labels[keep] == mel).astype(int), probs[keep, mel]) if keep.any() else None


def _with_intervals(metrics: dict, intervals: dict[str, list[float]]) -> dict:
    return {k: {"value": v, "ci95": intervals.get(k)} for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def numerics(entry: Path, recipe: Recipe, shared: Path, predictors: dict, run: Path | None) -> dict:
    """Every artifact on the test split and the external set, against torch fp32 of the packed weights (with no
    ``run``, the weights are the entry's own and its earlier storage check stands)."""
    from edgederm.evaluate.verify.measure import measure
    from edgederm.evaluate.verify.scoring import agreement
    from edgederm.runtime import Predictor

    spec = predictors["torch fp32"].spec
    ham_split = ZOO / "lite0-ham10000"  # segmenters' external set: the HAM10000 images the reference classifier never trained on
    sets = {
        "test": (fill(recipe.test, entry, RUNS, shared), entry, "the entry's lesion-disjoint test split (splits.csv)"),
        "external": (
            fill(recipe.external, entry, RUNS, shared),
            ham_split if recipe.task == "segmentation" else None,
            recipe.external_note,
        ),
    }
    result: dict = {"storage": {}, "sets": {}}
    for key, (data, split_from, note) in sets.items():
        dataset = _dataset(data, split_from)
        cache, truth, groups = _scored(spec, dataset, key)
        torch_fp32 = measure(predictors["torch fp32"], cache.pixels, truth)
        rows = {}
        for name, predictor in predictors.items():
            measured = torch_fp32 if name == "torch fp32" else measure(predictor, cache.pixels, truth, spec, reference=torch_fp32)
            metrics = dict(measured.metrics)
            if spec.task == "classification":
                metrics["mel_vs_nv_auc"] = _mel_vs_nv_auc(spec, truth.labels, measured.probs)
            rows[name] = {
                "metrics": _with_intervals(metrics, _intervals(spec, truth, measured.probs, groups)),
                "deltas_vs_torch": measured.deltas,
                "agreement_vs_torch": {k: v for k, v in (measured.agreement or {}).items() if not isinstance(v, list)},
            }
            if spec.task == "classification":
                rows[name]["confusion_matrix"] = metrics.get("confusion_matrix")
            logger.info(f"{recipe.name} {key} {name}: {_headline_text(spec.task, rows[name]['metrics'])}")
        relative = data.replace(str(shared), "../shared/data")
        result["sets"][key] = {
            "data": relative,
            "note": note,
            "n_images": len(cache.kept),
            "artifacts": rows,
        }
        if key == "test":
            result["check_subset"] = _check_subset(spec, dataset, cache, truth, relative, {n: predictors[n] for n in CHECKED})
            if run is None:
                result["storage"] = json.loads((ZOO / recipe.name / "numerics.json").read_text())["storage"]
                continue
            float32 = measure(Predictor.load(run), cache.pixels, truth)
            result["storage"] = {
                "dtype": recipe.storage,
                "what": f"the {recipe.storage}-stored weights against the float32 run they came from, on the test images",
                **{k: v for k, v in agreement(spec, truth, float32.probs, torch_fp32.probs).items() if not isinstance(v, (list, dict))},
            }
    return result


CHECKED = ("torch fp32", "tflite int8")
CHECK_IMAGES = 64


def _check_subset(spec, dataset, cache, truth, data: str, predictors: dict) -> dict:
    """The first 64 test images (by image id) and what torch fp32 and the phone artifact score on them: the
    test suite re-scores exactly these where the data is present, so the shipped files cannot drift from this file."""
    from edgederm.evaluate.verify.measure import measure
    from edgederm.evaluate.verify.scoring import score

    order = sorted(range(len(cache.kept)), key=lambda i: dataset.samples[cache.kept[i]].image_id)[:CHECK_IMAGES]
    sub = truth.subset(order)
    out = {"data": data, "split": "test", "image_ids": [dataset.samples[cache.kept[i]].image_id for i in order], "metrics": {}}
    for name, predictor in predictors.items():
        probs = measure(predictor, cache.pixels[order], None, spec).probs
        out["metrics"][name] = {k: v for k, v in score(spec, sub, probs).items() if isinstance(v, int | float) or v is None}
    return out


def _headline_text(task: str, metrics: dict) -> str:
    keys = ("jaccard", "dice") if task == "segmentation" else ("balanced_accuracy", "macro_auc", "mel_sensitivity")
    return ", ".join(f"{k} {metrics[k]['value']:.3f}" for k in keys if k in metrics and metrics[k]["value"] is not None)


def perf(artifacts: dict[str, Path], work: Path, spec, shared: Path, recipe: Recipe, entry: Path) -> dict:
    """edgederm-bench on every artifact: size, load, latency median/p90 at 1 and 2 threads, peak memory."""
    from edgederm.data.pixels import load_pixels

    dataset = _dataset(fill(recipe.test, entry, RUNS, shared), entry)
    cache = load_pixels(dataset.subset(list(range(min(16, len(dataset))))), spec.preprocess, desc=None)
    inputs = work / "perf_inputs.npz"
    np.savez(inputs, pixels=cache.pixels, names=np.array([f"img{i}" for i in range(len(cache.pixels))]))
    out = work / "perf_bench.json"
    bench = [str(Path(sys.executable).with_name("edgederm-bench")), *map(str, artifacts.values())]
    subprocess.run([*bench, "--inputs", str(inputs), "--threads", PERF_THREADS, "--runs", "50", "--out", str(out)], check=True, cwd=REPO)
    raw = json.loads(out.read_text())
    by_path = {str(Path(a["path"]).resolve()): a for a in raw["artifacts"]}
    rows = {}
    for name, path in artifacts.items():
        measured = by_path[str(path.resolve())]
        latency = measured["latency"]
        rows[name] = {
            "size_bytes": path.stat().st_size,
            "load_ms": {str(t["threads"]): t["load_ms"] for t in latency},
            "peak_rss_mb": max((t["peak_rss_mb"] for t in latency if t.get("peak_rss_mb")), default=None),
            "latency_ms": {str(t["threads"]): {"median": t["median_ms"], "p90": t["p90_ms"]} for t in latency},
        }
    return {"device": raw["device"], "batch": 1, "runs": 50, "inputs": f"{len(cache.pixels)} test images", "artifacts": rows}


def build(recipe: Recipe, runs: Path, shared: Path, keep_work: Path | None, refresh: bool = False) -> None:
    """With ``keep_work``, a second build reuses its exports and numerics and measures perf again (on an idle machine).
    With ``refresh``, the weights are the entry's own (see the module docstring)."""
    from edgederm.core.formats import FORMATS
    from edgederm.core.manifest import artifact_sha256
    from edgederm.core.zoo import CARD
    from edgederm.export import export_run
    from edgederm.runtime import Predictor

    run, entry = runs / recipe.name, ZOO / recipe.name
    if refresh and not (entry / CARD).is_file():
        raise SystemExit(f"no zoo entry at {entry}: python benchmarks/zoo.py build {recipe.name}")
    if not refresh and not (run / "model.safetensors").is_file():
        raise SystemExit(f"no trained run at {run}: python benchmarks/zoo.py train {recipe.name}")
    started = time.time()
    staging = entry.with_name(f".{recipe.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    if refresh:
        staging.mkdir()
        for name in ("model.safetensors", "spec.json", "splits.csv"):
            shutil.copyfile(entry / name, staging / name)
    else:
        pack(run, staging, recipe.storage)
    reuse = keep_work is not None
    work = keep_work or Path(tempfile.mkdtemp(prefix="zoo-"))
    calib = fill(recipe.test, staging, runs, shared)  # the run's own data: export calibrates on its train split
    manifest = work / "export" / "manifest.json"
    if not (reuse and manifest.is_file()):
        export_run(staging, [FORMATS["tflite"], FORMATS["onnx"]], list(QUANTS), work / "export", calib_data=calib, calib_n=200)
    artifacts = {}
    for record in json.loads(manifest.read_text())["artifacts"]:
        if record["status"] != "ok":
            logger.info(f"{recipe.name}: {record['format']} {record['quant']} {record['status']}: {record.get('message', '')}")
            continue
        artifacts[f"{record['format']} {record['quant']}"] = work / "export" / record["path"]
    predictors = {"torch fp32": Predictor.load(staging), **{name: Predictor.load(path) for name, path in artifacts.items()}}
    phone = f"{recipe.name}_int8.tflite"
    shutil.copyfile(artifacts["tflite int8"], staging / phone)
    spec = predictors["torch fp32"].spec
    cached = work / "numerics.json"
    if reuse and cached.is_file():
        measured = json.loads(cached.read_text())
    else:
        measured = numerics(staging, recipe, shared, predictors, None if refresh else run)
        cached.write_text(json.dumps(measured))
    measured_perf = perf(artifacts, work, spec, shared, recipe, staging)
    action = "refresh" if refresh else "build"
    made = {
        "created": time.strftime("%Y-%m-%d"),
        "machine": training_machine(),
        "command": f"python benchmarks/zoo.py {action} {recipe.name}",
    }
    (staging / "numerics.json").write_text(json.dumps({**made, **measured}, indent=2) + "\n")
    (staging / "perf.json").write_text(json.dumps({**made, **measured_perf}, indent=2) + "\n")
    test = measured["sets"]["test"]["artifacts"]
    keys = ("jaccard", "dice") if recipe.task == "segmentation" else ("balanced_accuracy", "macro_auc", "mel_sensitivity", "op_sensitivity")
    headline = {f"test {k} (torch fp32)": test["torch fp32"]["metrics"].get(k) for k in keys}
    headline[f"test {keys[0]} ({phone})"] = test["tflite int8"]["metrics"].get(keys[0])
    files = ("model.safetensors", "spec.json", "splits.csv", phone, "numerics.json", "perf.json")
    card = {
        "name": recipe.name,
        "task": recipe.task,
        "arch": spec.arch,
        "img_size": spec.preprocess.input_size,
        "description": recipe.description,
        "data": recipe.data,
        "license": recipe.license,
        "phone_artifact": phone,
        "files": {name: artifact_sha256(staging / name) for name in files},
        "headline": headline,
    }
    (staging / CARD).write_text(json.dumps(card, indent=2) + "\n")
    shutil.rmtree(entry, ignore_errors=True)
    staging.rename(entry)
    if keep_work is None:
        shutil.rmtree(work, ignore_errors=True)
    logger.info(
        f"zoo:{recipe.name} built in {(time.time() - started) / 60:.1f} min ({sum(p.stat().st_size for p in entry.iterdir()) / 1e6:.1f} MB)"
    )


# -- table --------------------------------------------------------------------------------------


def _cpu(device: dict) -> str:
    features = device.get("cpu_features")
    listed = f" with {', '.join(features)}" if features else "" if features is None else " without AVX2, VNNI or dot-product"
    return f"{device.get('cpu', 'an unnamed CPU')} ({device.get('machine', '?')}){listed}, {device.get('os', '')}"


def table() -> dict:
    from edgederm.core import zoo

    rows = []
    for entry in zoo.entries().values():
        numbers = json.loads(entry.file("numerics.json").read_text())
        speed = json.loads(entry.file("perf.json").read_text())
        decision = json.loads(entry.file("spec.json").read_text()).get("decision")
        rows.append({"card": entry.to_dict(), "size_bytes": entry.size_bytes, "decision": decision, "numerics": numbers, "perf": speed})
    result = {"command": command_line("zoo", ["table"]), "entries": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "zoo.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "zoo.md").write_text(markdown(result))
    return result


# the named class by plain argmax, beside the entry's stored rule (numerics built before these were scored lack them)
ARGMAX = ("argmax_balanced_accuracy", "argmax_mel_sensitivity")


def _cell(value: dict | None) -> str:
    if not value or value.get("value") is None:
        return "-"
    low, high = value.get("ci95") or (None, None)
    return f"{value['value']:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else "")


def _has_argmax(result: dict) -> bool:
    sets = [block for row in result["entries"] for block in row["numerics"]["sets"].values()]
    return any(k in block["artifacts"]["torch fp32"]["metrics"] for block in sets for k in ARGMAX)


def markdown(result: dict) -> str:
    lines = [
        "# The model zoo: every entry, every format, with 95% intervals",
        "",
        f"Command: `{result['command']}` (each entry: `python benchmarks/zoo.py train NAME && python benchmarks/zoo.py build NAME`).",
        "",
        "Intervals: bootstrap over lesions (1000 resamples). Metrics name each class by the entry's stored decision rule"
        + ("; the `argmax_` columns name it by the most probable class instead. " if _has_argmax(result) else ". ")
        + "Latency: batch 1, measured by `edgederm-bench` on the machine in each entry's perf.json.",
        "",
    ]
    total = sum(row["size_bytes"] for row in result["entries"])
    lines += [f"Zoo size: {total / 1e6:.1f} MB in {len(result['entries'])} entries.", ""]
    for row in result["entries"]:
        card, numbers, speed = row["card"], row["numerics"], row["perf"]
        seg = card["task"] == "segmentation"
        keys = ("jaccard", "dice") if seg else ("balanced_accuracy", "macro_auc", "mel_sensitivity", "op_sensitivity", "op_specificity")
        lines += [
            f"## zoo:{card['name']}",
            "",
            f"{card['description']}. {card['arch']} at {card['img_size']} px, {row['size_bytes'] / 1e6:.1f} MB. Trained on {card['data']}. "
            f"License: {card['license']}. Built {numbers['created']} on {where(numbers['machine'])}.",
            "",
            *([] if seg else [f"Named class: {describe(row.get('decision'))}.", ""]),
            f"Latency measured {speed['created']} on {_cpu(speed['device'])}.",
            "",
            f"Weights stored as {numbers['storage']['dtype']}; against the float32 run on the test images: "
            f"{json.dumps({k: v for k, v in numbers['storage'].items() if k not in ('what', 'dtype')})}.",
            "",
        ]
        for key, block in numbers["sets"].items():
            extra = () if seg else ("mel_vs_nv_auc",) if key == "external" else ()
            argmax = tuple(k for k in ARGMAX if k in block["artifacts"]["torch fp32"]["metrics"])
            cols = (*keys, *argmax, *extra)
            lines += [
                f"### {key}: {block['note']} ({block['n_images']} images)",
                "",
                "| artifact | " + " | ".join(cols) + " | agreement vs torch | 1-thread ms (p90) | 2-thread ms | size MB | peak RSS MB |",
                "|---|" + "---:|" * (len(cols) + 5),
            ]
            for name, measured in block["artifacts"].items():
                agree = measured["agreement_vs_torch"]
                agree_text = "-" if not agree else f"{agree.get('top1', agree.get('mask_iou', 0)):.4f}"
                p = speed["artifacts"].get(name, {})
                lat = p.get("latency_ms", {})
                one = f"{lat['1']['median']:.2f} ({lat['1']['p90']:.2f})" if "1" in lat else "-"
                two = f"{lat['2']['median']:.2f}" if "2" in lat else "-"
                size = f"{p['size_bytes'] / 1e6:.2f}" if "size_bytes" in p else "-"
                rss = f"{p['peak_rss_mb']:.0f}" if p.get("peak_rss_mb") else "-"
                cells = " | ".join(_cell(measured["metrics"].get(k)) for k in cols)
                lines.append(f"| {name} | {cells} | {agree_text} | {one} | {two} | {size} | {rss} |")
            lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    configure()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["train", "build", "refresh", "table"])
    parser.add_argument("names", nargs="*", help=f"entries (default: all): {', '.join(RECIPES)}")
    parser.add_argument("--runs", type=Path, default=RUNS, help="where the trained runs live (default %(default)s)")
    parser.add_argument("--shared", type=Path, default=SHARED, help="the data root (default %(default)s)")
    parser.add_argument("--keep-work", type=Path, help="keep the exports here instead of a temporary folder")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown entries {unknown}; choose from {', '.join(RECIPES)}")
    if args.action == "table":
        table()
        return 0
    stages = [n for n in args.names if not RECIPES[n].shipped]
    if stages and args.action != "train":
        parser.error(f"{', '.join(stages)}: a training stage, never packed; {args.action} the entries that start from it")
    names = args.names or [n for n, r in RECIPES.items() if r.shipped or args.action == "train"]
    for name in names:
        if args.action == "train":
            train(RECIPES[name], args.runs, args.shared)
        else:
            build(RECIPES[name], args.runs, args.shared, args.keep_work, refresh=args.action == "refresh")
    table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
