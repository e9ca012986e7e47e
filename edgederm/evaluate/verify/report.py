"""The verify report: one table, the plots behind it, as Markdown and as one self-contained HTML file."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from ...core import atomic
from ...core.spec import ModelSpec
from ...runtime.readout import describe, malignant_classes, malignant_score
from .. import plots
from ..report import explain_rule

PLOTS = {
    "latency": ("latency.png", "Latency per artifact (batch 1, median with p90 whisker)"),
    "roc": ("roc.png", "ROC of every artifact, overlaid"),
    "reliability": ("reliability.png", "Reliability of every artifact, overlaid"),
    "confusion": ("confusion.png", "Confusion matrices (rows: true class, shares of the row)"),
    "overlays": ("overlays.png", "Masks where the artifacts disagree most with the reference"),
    "saliency": ("saliency.png", "What the reference model looks at (Grad-CAM; least and most on the lesion)"),
}
TASK_PLOTS = {"classification": ("latency", "roc", "reliability", "confusion"), "segmentation": ("latency", "overlays")}
METRIC_COLUMNS = {
    "classification": [
        ("bal. acc", "balanced_accuracy"),
        ("accuracy", "accuracy"),
        ("macro AUC", "macro_auc"),
        ("mel sens.", "mel_sensitivity"),
    ],
    "segmentation": [
        ("Jaccard", "jaccard"),
        ("Dice", "dice"),
        ("pixel acc.", "pixel_accuracy"),
        ("sensitivity", "sensitivity"),
        ("specificity", "specificity"),
    ],
}
DPI = 100


def _label(row: dict[str, Any]) -> str:
    return f"{row['format']} {row['quant']}" + (" (emulated)" if row.get("emulated") else "")


def _name(result: dict[str, Any], row: dict[str, Any]) -> str:
    return "torch fp32 (reference)" if row is result["reference"] else _label(row)


def _scored(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The reference first, then every artifact that produced outputs."""
    return [result["reference"], *[a for a in result["artifacts"] if a.get("probs") is not None]]


def _ratio(value: float | None, base: float | None) -> str:
    return f"{value / base:.2f}x" if value and base else ""


def latency_at(row: dict[str, Any], threads: int) -> dict[str, Any] | None:
    """A verify row's timing at ``threads`` threads (``runtime.timing`` fields), None where it was not timed."""
    return next((t for t in row.get("latency") or [] if t.get("threads") == threads), None)


def _onnx_fp32(result: dict[str, Any]) -> dict[str, Any] | None:
    return next((a for a in result["artifacts"] if a["format"] == "onnx" and a["quant"] == "fp32" and a.get("latency")), None)


def _device_columns(result: dict[str, Any], emulated: bool) -> list[tuple[str, dict[str, dict]]]:
    """(device name, {artifact sha256 or name: its entry}) for each merged device file, or each emulated CPU."""
    columns = []
    for device in result.get("device_results", []):
        if bool(device.get("emulated")) != emulated:
            continue
        by_key = {}
        for artifact in device.get("artifacts", []):
            for key in (artifact.get("sha256"), artifact.get("name")):
                if key:
                    by_key[key] = artifact
        columns.append((device["device"]["cpu"] if emulated else device["device_label"], by_key))
    return columns


def _device_entry(column: dict[str, dict], row: dict[str, Any]) -> dict[str, Any]:
    return column.get(row.get("sha256") or "") or column.get(row.get("name") or "") or {}


def _device_latency(column: dict[str, dict], row: dict[str, Any]) -> str:
    return " / ".join(f"{t['median_ms']:.2f} ms @{t['threads']}" for t in _device_entry(column, row).get("latency") or [])


def _emulated_cell(column: dict[str, dict], row: dict[str, Any], headline: str) -> str:
    """An artifact on one emulated CPU: status, agreement with the same artifact on this host, headline delta vs torch."""
    entry = _device_entry(column, row)
    if not entry:
        return ""
    agree = entry.get("agreement") or {}
    share = agree.get("top1_vs_host", agree.get("mask_iou_vs_host"))
    delta = (entry.get("deltas") or {}).get(headline)
    parts = [entry.get("status", "")]
    if share is not None and "pixels_differing_vs_host" in agree:
        parts.append(f"{share:.1%} vs host, {agree['pixels_differing_vs_host']:.2%} of pixels differ")
    elif share is not None:
        parts.append(f"{share:.1%} vs host, max Δp {agree['max_abs_prob_diff_vs_host']:.1e}")
    if delta is not None:
        parts.append(f"Δ {delta:+.3f}")
    return "; ".join(parts)


def table_rows(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    threads = result["threads"]
    ref = result["reference"]
    onnx = _onnx_fp32(result)
    op = result.get("operating_point")
    devices, emulated = _device_columns(result, emulated=False), _device_columns(result, emulated=True)
    columns = METRIC_COLUMNS[result["task"]]
    header = ["artifact", "status", "size (MB)", *(f"{title} (Δ)" for title, _ in columns)]
    if op:
        header.append(f"refer sens./spec. @ {op['threshold']:.3f}")
    header += ["mask IoU vs reference" if result["task"] == "segmentation" else "top-1 agree", "max abs Δp"]
    for t in threads:
        header += [f"median / p90 ms @{t}thr", f"vs torch @{t}", f"vs ORT fp32 @{t}"]
    header += [f"{name} (device)" for name, _ in devices]
    header += [f"{cpu}: on ARM64 (emulated)" for cpu, _ in emulated]
    header.append("note")

    def metric(row, key):
        value = (row.get("metrics") or {}).get(key)
        if value is None:
            return ""
        delta = (row.get("deltas") or {}).get(key)
        return f"{value:.3f}" + (f" ({delta:+.3f})" if delta is not None else "")

    rows = []
    for row in [ref, *result["artifacts"]]:
        is_ref = row is ref
        cells = [
            _name(result, row),
            "reference" if is_ref else row["status"],
            "" if is_ref or not row.get("size_bytes") else f"{row['size_bytes'] / 1e6:.2f}",
            *(metric(row, key) for _, key in columns),
        ]
        if op:
            m = row.get("metrics") or {}
            cells.append(f"{m['op_sensitivity']:.3f} / {m['op_specificity']:.3f}" if m.get("op_sensitivity") is not None else "")
        agree = row.get("agreement") or {}
        share = agree.get("top1", agree.get("mask_iou")) if agree else None
        cells += ["" if share is None else f"{share:.1%}", f"{agree['max_abs_prob_diff']:.4f}" if agree else ""]
        for t in threads:
            mine, base, ort = latency_at(row, t), latency_at(ref, t), latency_at(onnx, t) if onnx else None
            cells.append(f"{mine['median_ms']:.2f} / {mine['p90_ms']:.2f}" if mine else "")
            cells.append(_ratio(mine and mine["median_ms"], base and base["median_ms"]) if not is_ref else "1.00x")
            cells.append(_ratio(mine and mine["median_ms"], ort and ort["median_ms"]))
        cells += [_device_latency(column, row) for _, column in devices]
        cells += ["" if is_ref else _emulated_cell(column, row, result["headline_metric"]) for _, column in emulated]
        note = "; ".join(row.get("checks") or []) or row.get("message") or ""
        aware = (row.get("details") or {}).get("int8_aa")
        if aware:
            note = "; ".join(filter(None, [note, f"{len(aware['kept_float'])}/{aware['candidates']} layers kept float"]))
        cells.append(note)
        rows.append(cells)
    return header, rows


def _curve(result: dict[str, Any], row: dict[str, Any], labels: np.ndarray, scores: np.ndarray) -> plots.Curve:
    """A row's line in an overlay, the reference's drawn thicker."""
    return plots.Curve(_name(result, row), labels, scores, 2.5 if row is result["reference"] else 1)


def _plot_latency(result: dict[str, Any]) -> Any:
    rows = [r for r in [result["reference"], *result["artifacts"]] if r.get("latency")]
    by_threads = {t: [latency_at(r, t) for r in rows] for t in result["threads"]}
    return plots.latency_bars([_name(result, r) for r in rows], by_threads)


def _roc_target(spec: ModelSpec, labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    if malignant_classes(spec):
        truth = np.isin(labels, [spec.class_names.index(c) for c in malignant_classes(spec)])
        return truth.astype(int), malignant_score(spec, probs), "malignant (" + ", ".join(malignant_classes(spec)) + ") vs benign"
    return (labels == 0).astype(int), probs[:, 0], f"{spec.class_names[0]} vs rest"


def _plot_roc(result: dict[str, Any], spec: ModelSpec) -> Any:
    labels = result["truth"].labels
    curves, title = [], ""
    for row in _scored(result):
        truth, scores, title = _roc_target(spec, labels, row["probs"])
        curves.append(_curve(result, row, truth, scores))
    op = result.get("operating_point")
    point = None
    if op and op.get("sensitivity") is not None:
        point = (1 - op["specificity"], op["sensitivity"], "stored operating point (validation)")
    return plots.roc(curves, title=f"ROC: {title}", figsize=(6, 5.5), label="{name}: AUC {auc:.3f}", legend_fontsize=7, point=point)


def _plot_reliability(result: dict[str, Any]) -> Any:
    labels = result["truth"].labels
    return plots.reliability_lines([_curve(result, row, labels, row["probs"]) for row in _scored(result)])


def _plot_confusions(result: dict[str, Any], class_names: list[str]) -> Any:
    rows = [r for r in _scored(result) if (r.get("metrics") or {}).get("confusion_matrix")]
    return plots.confusion_grid([(_name(result, row), row["metrics"]["confusion_matrix"]) for row in rows], class_names)


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    clean = [[c.replace("|", "/") for c in r] for r in rows]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *["| " + " | ".join(r) + " |" for r in clean]]


def saliency_lines(result: dict[str, Any]) -> list[str]:
    """The Markdown section on what the reference model keys on; nothing without a saliency sample."""
    saliency = result.get("saliency")
    if not saliency:
        return []
    lines = [
        "## What the reference model keys on",
        "",
        f"{saliency['method']}, on {saliency['images']} images with a true lesion mask: on average "
        f"{saliency['mean_share_inside_lesion']:.0%} of the saliency lies on the lesion (median {saliency['median_share_inside_lesion']:.0%}; "
        f"the lesion covers {saliency['mean_lesion_area']:.0%} of the input on average, which is what a map spread evenly would score). "
        f"{len(saliency['mostly_outside'])} image(s) have less than half their saliency on the lesion: look for rulers, ink, "
        "hair or vignetting there.",
        "",
    ]
    if saliency["mostly_outside"]:
        lines += ["| image | predicted | saliency on the lesion |", "|---|---|---:|"]
        lines += [f"| `{m['image']}` | {m['predicted']} | {m['share_inside']:.0%} |" for m in saliency["mostly_outside"][:15]]
        lines.append("")
    return lines


CLASS_CHANGES = (
    "Where the named class changes",
    "Each cell: images torch names this class and the artifact does not (-), and the reverse (+); in brackets, how many of "
    "them truly are that class, which is what moves its sensitivity. Then the class's mean change of log-probability.",
)


def class_change_table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Which classes each artifact names differently from the reference; no rows where none does."""
    rows = [a for a in result["artifacts"] if any(c["lost"] or c["gained"] for c in _changes(a).values())]
    if not rows:
        return [], []
    header = ["artifact", *_changes(rows[0])]
    cells = []
    for row in rows:
        line = [_name(result, row)]
        for change in _changes(row).values():
            moved = f"-{change['lost']} +{change['gained']}"
            if "lost_true" in change:
                moved += f" (-{change['lost_true']} +{change['gained_true']})"
            line.append(f"{moved}; {change['mean_dlogp']:+.3f}")
        cells.append(line)
    return header, cells


def _changes(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return (row.get("agreement") or {}).get("class_changes") or {}


def class_change_lines(result: dict[str, Any]) -> list[str]:
    header, rows = class_change_table(result)
    if not rows:
        return []
    return [f"## {CLASS_CHANGES[0]}", "", CLASS_CHANGES[1], "", *markdown_table(header, rows), ""]


def _summary_lines(result: dict[str, Any]) -> list[str]:
    counts = {s: sum(a["status"] == s for a in result["artifacts"]) for s in ("pass", "fail", "error", "unverified")}
    op = result.get("operating_point")
    lines = [
        f"- Data: `{result['data']}`, {result['n_images']} images ({result['unreadable_images']} unreadable, skipped for every model).",
        f"- Reference: `{result['reference']['name']}` run by torch in fp32 on the same preprocessed pixels.",
        f"- Pass rule: {result['headline_metric']} may drop at most {result['max_drop']:g} against the reference"
        + (f"; guards: {', '.join(result['guards'])}" if result["guards"] else "")
        + ".",
        f"- Result: {counts['pass']} pass, {counts['fail']} fail, {counts['error']} error, {counts['unverified']} unverified.",
        f"- Latency: {result['latency_input']}; median and p90 of timed runs after warm-up, on `{result['machine']['platform']}` "
        f"({result['machine']['cpus']} CPUs), threads {', '.join(map(str, result['threads']))}.",
    ]
    if op:
        lines.append(
            f"- Referral threshold (from the ModelSpec, set on validation data for {op['target_sensitivity']:.0%} sensitivity): "
            f"malignant score ({', '.join(op['classes'])}) >= {op['threshold']:.3f}. The table re-measures sensitivity/specificity at it."
        )
    if result.get("decision"):
        lines.append(
            f"- Named class (accuracy, balanced accuracy, sensitivities, top-1 agreement): {describe(result['decision'])}. {explain_rule(describe(result['decision']))}"
        )
    emulated = [d for d in result.get("device_results", []) if d.get("emulated")]
    if emulated:
        n, of = emulated[0].get("n_images", result["n_images"]), emulated[0].get("of_images", result["n_images"])
        images = "the same pixels" if n == of else f"{n} of the {of} images (evenly spaced; torch scored on the same {n})"
        lines.append(
            f"- On ARM64 (emulated): every TFLite and ONNX artifact ran again on {images} under QEMU user-mode emulation of "
            f"{', '.join(d['device']['cpu'] for d in emulated)} (Debian arm64, the runtimes' aarch64 wheels), judged by the same "
            "pass rule. Each cell: status, agreement with the same artifact on this host, and the headline metric's change against "
            "torch. Emulated times are not a phone's latency and are not shown."
        )
    if any(a.get("emulated") for a in result["artifacts"]):
        lines.append(
            "- CoreML rows marked *emulated* were executed by edgederm's MIL reference executor on Linux (torch ops, fp16 rounding "
            "emulated), not by Apple's CoreML runtime: a numerics check, with no latency."
        )
    return lines


def _plot_overlays(result: dict[str, Any], spec: ModelSpec, n: int = 4) -> Any:
    """The images whose mask differs most from the reference's in any artifact: truth, reference, that artifact."""
    from .scoring import masks_of

    truth = result["truth"]
    rows = [a for a in result["artifacts"] if a.get("agreement") and "mask_iou_per_image" in a["agreement"]]
    worst = {}  # image index -> (iou, artifact)
    for row in rows:
        for i, iou in enumerate(row["agreement"]["mask_iou_per_image"]):
            if i not in worst or iou < worst[i][0]:
                worst[i] = (iou, row)
    chosen = sorted(worst, key=lambda i: worst[i][0])[:n]
    reference_masks = masks_of(spec, truth, result["reference"]["probs"])
    images = []
    for i in chosen:
        iou, row = worst[i]
        artifact_mask = masks_of(spec, type(truth)(masks=[truth.masks[i]], sizes=[truth.sizes[i]]), row["probs"][i : i + 1])[0]
        images.append(
            plots.ImagePanel(
                np.asarray(result["images"][i].load_image()),
                [(truth.masks[i], "white"), (reference_masks[i], "lime"), (artifact_mask, "red")],
                f"{result['images'][i].display_path.split('/')[-1][:28]}\n{_label(row)}: IoU {iou:.2f} with torch",
            )
        )
    suptitle = "white: true mask, green: torch fp32, red: the artifact"
    return plots.image_grid(images, columns=len(images), size=(3.6, 3.8), line_width=1.2, suptitle=suptitle)


def _plot_saliency(saliency: dict[str, Any], n: int = 8) -> Any:
    """The images with the least saliency on the lesion, then the most: CAM over the image, lesion outlined."""
    items = sorted(saliency["items"], key=lambda i: i.inside)
    picked = items[: n // 2] + items[-(n - n // 2) :] if len(items) > n else items
    images = [
        plots.ImagePanel(
            item.pixels,
            [(item.mask, "white")],
            f"{Path(item.sample.display_path).name[:24]}\n{item.predicted}: {item.inside:.0%} on the lesion",
            heat=item.cam,
        )
        for item in picked
    ]
    suptitle = "Grad-CAM (torch reference); white: true lesion outline"
    return plots.image_grid(images, columns=4, size=(3.1, 3.3), line_width=1, suptitle=suptitle)


def write_report(result: dict[str, Any], spec: ModelSpec, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    painters = {
        "latency": lambda: _plot_latency(result),
        "roc": lambda: _plot_roc(result, spec),
        "reliability": lambda: _plot_reliability(result),
        "confusion": lambda: _plot_confusions(result, spec.class_names),
        "overlays": lambda: _plot_overlays(result, spec),
        "saliency": lambda: _plot_saliency(result["saliency"]),
    }
    keys = [*TASK_PLOTS[result["task"]], *(["saliency"] if result.get("saliency") else [])]
    for key in keys:
        plots.save(painters[key](), out_dir / PLOTS[key][0], DPI)
    figures = [PLOTS[key] for key in keys]
    header, rows = table_rows(result)
    title = f"edgederm verify: {result['export_dir']}"
    markdown = [f"# {title}", "", *_summary_lines(result), "", *markdown_table(header, rows), "", *class_change_lines(result)]
    markdown += saliency_lines(result)
    for file, caption in figures:
        markdown += [f"## {caption}", "", f"![{caption}]({file})", ""]
    markdown_path = out_dir / "verify.md"
    atomic.write_text(markdown_path, "\n".join(markdown))
    html_path = out_dir / "verify.html"
    atomic.write_text(html_path, _html(title, _summary_lines(result), header, rows, out_dir, figures, class_change_table(result)))
    return markdown_path, html_path


def _inline_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _html(
    title: str,
    summary: list[str],
    header: list[str],
    rows: list[list[str]],
    out_dir: Path,
    plots: list[tuple[str, str]],
    changes: tuple[list[str], list[list[str]]] = ([], []),
) -> str:
    status_class = {"pass": "pass", "fail": "fail", "error": "fail", "unverified": "unverified"}

    def cell(text: str, index: int) -> str:
        css = f' class="{status_class[text]}"' if index == 1 and text in status_class else ""
        return f"<td{css}>{html.escape(text)}</td>"

    table = ["<table>", "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    table += ["<tr>" + "".join(cell(c, i) for i, c in enumerate(r)) + "</tr>" for r in rows]
    table.append("</table>")
    if changes[1]:
        table += [f"<h2>{html.escape(CLASS_CHANGES[0])}</h2><p>{html.escape(CLASS_CHANGES[1])}</p><table>"]
        table += ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in changes[0]) + "</tr>"]
        table += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in changes[1]]
        table.append("</table>")
    figures = [
        f'<h2>{html.escape(caption)}</h2><img alt="{html.escape(caption)}" src="{_inline_png(out_dir / file)}">' for file, caption in plots
    ]
    items = "".join(f"<li>{html.escape(line[2:]).replace('`', '')}</li>" for line in summary)
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:4px 6px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "th{background:#f3f3f3}.pass{background:#dff5df}.fail{background:#f9d6d6}.unverified{background:#eee}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style></head>"
        f"<body><h1>{html.escape(title)}</h1><ul>{items}</ul>{''.join(table)}{''.join(figures)}</body></html>\n"
    )


def write_json(result: dict[str, Any], path: Path) -> None:
    from .runner import to_json

    atomic.write_text(path, json.dumps(to_json(result), indent=2) + "\n")
