"""The metadata inside a TFLite artifact, written by hand (no tflite-support dependency).

``stamp`` gives every file its ModelSpec as JSON in the flatbuffer's ``Model.metadata`` list under
SPEC_KEY (what ``edgederm.runtime.tflite_backend`` reads, without torch) and readable tensor names.
NHWC files also get the standard TFLite Metadata (a TFLITE_METADATA entry: a ModelMetadata flatbuffer of
tensorflow_lite_support's metadata_schema.fbs, built field slot by field slot) and labels.txt +
edgederm_spec.json zipped onto the end of the file, as MediaPipe's ImageClassifier and ImageSegmenter
writers make them, so MediaPipe Tasks runs the files as they are (see converters/tflite.py).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from typing import Any

import numpy as np

from edgederm.core.metadata import LABELS_FILE, SPEC_FILE, SPEC_KEY, labels_text
from edgederm.core.spec import ModelSpec
from edgederm.runtime.tflite_backend import TFLITE_METADATA

# TFLite Metadata (tensorflow_lite_support/metadata/metadata_schema.fbs): identifier, enum and union values.
_METADATA_IDENTIFIER = b"M001"
_METADATA_PARSER_VERSION = "1.0.0"  # every field of the classifier's metadata exists in schema 1.0.0
_CUSTOM_METADATA_PARSER_VERSION = "1.5.0"  # SubGraphMetadata.custom_metadata was added in 1.5.0
_RGB, _GRAYSCALE, _DESCRIPTIONS, _TENSOR_AXIS_LABELS = 1, 2, 1, 2
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES, _NORMALIZATION_OPTIONS = 1, 2, 1
# MediaPipe's image_segmenter_metadata_schema.fbs: ImageSegmenterOptions, stored as custom metadata of this name.
_SEGMENTER_METADATA, _SEGMENTER_IDENTIFIER, _ACTIVATION_NONE = "SEGMENTER_METADATA", b"V001", 0


def stamp(model: bytes, spec: ModelSpec, nhwc: bool) -> bytes:
    """Embed the spec; NHWC files also get the standard TFLite Metadata MediaPipe Tasks reads."""
    spec_json = spec.to_json().encode("utf-8")
    if not nhwc:  # MediaPipe's ImageClassifier and ImageSegmenter take NHWC images only
        return with_metadata(model, {SPEC_KEY: spec_json})
    model = with_metadata(model, {SPEC_KEY: spec_json, TFLITE_METADATA: standard_metadata(spec)})
    return with_associated_files(model, {LABELS_FILE: labels_text(spec).encode("utf-8"), SPEC_FILE: spec_json})


def with_metadata(model: bytes, entries: dict[str, bytes]) -> bytes:
    """The model with ``entries`` as Model.metadata buffers (replacing entries of the same name).

    Tensors are renamed to the module path they come from (``blocks.1.0.conv_dw``). litert-torch
    names each one by the full class path of every module fused into it: 109 KB of names in an
    EfficientNet-Lite0, 3% of its int8 file, and unreadable in Netron or an interpreter's details.
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    tree = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    _short_tensor_names(tree)
    for buffer in tree.buffers:
        # Weights stored after the flatbuffer come back as byte slices, which Pack copies one byte at a time.
        if buffer.data is not None and not isinstance(buffer.data, np.ndarray):
            buffer.data = np.frombuffer(buffer.data, np.uint8)
    tree.metadata = [m for m in tree.metadata or [] if _name(m.name) not in entries]
    for name, payload in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(payload, np.uint8)
        tree.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name, entry.buffer = name, len(tree.buffers) - 1
        tree.metadata.append(entry)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(tree))


def _short_tensor_names(tree: Any) -> None:
    for graph in tree.subgraphs:
        io = set(graph.inputs) | set(graph.outputs)  # signature-facing names stay as litert-torch made them
        seen: dict[str, int] = {}
        for index, tensor in enumerate(graph.tensors):
            name = _name(tensor.name or b"")
            if index in io or "/" not in name:
                continue
            short = module_path(name)
            seen[short] = seen.get(short, 0) + 1
            tensor.name = short if seen[short] == 1 else f"{short}:{seen[short] - 1}"


def module_path(scope: str) -> str:
    """``model.blocks.1.0.conv_dw`` from litert-torch's tensor names (``.../timm...InvertedResidual_0/torch...Conv2d_conv_dw;1;``)."""
    last = [name for name in scope.split(";") if name and not name.isdigit()][-1]
    parts = [segment.rsplit(".", 1)[-1].split("_", 1)[-1] for segment in last.split("/")[1:]]
    return ".".join(parts) or scope


def _name(raw: str | bytes) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else raw


def standard_metadata(spec: ModelSpec) -> bytes:
    """The TFLite Metadata of an NHWC artifact: MediaPipe's ImageClassifier's or ImageSegmenter's, by the task."""
    return image_classifier_metadata(spec) if spec.task == "classification" else image_segmenter_metadata(spec)


def image_classifier_metadata(spec: ModelSpec) -> bytes:
    """A ModelMetadata flatbuffer (TFLite Support's metadata_schema.fbs) as MediaPipe's image-classifier writer makes one.

    One RGB image input with the normalisation MediaPipe applies to 0-255 pixels, one output of
    class probabilities labelled by labels.txt; edgederm_spec.json rides along as a model-level file.
    """
    return _model_metadata(
        spec,
        title=f"edgederm {spec.arch} skin-lesion classifier",
        description=f"Classifies dermoscopy images into {', '.join(spec.class_names)}. Not a medical device.",
        subgraph="image_classifier",
        labels="Class names (HAM10000 dx codes), one per output index.",
        output=_scores_tensor,
    )


def image_segmenter_metadata(spec: ModelSpec) -> bytes:
    """A ModelMetadata flatbuffer as MediaPipe's image-segmenter writer makes one (activation NONE).

    The image input as the classifier's; one (1, S, S, 1) output of lesion probabilities described
    as a grayscale mask image over dimensions 1-2, its channel labelled by labels.txt (``lesion``);
    SEGMENTER_METADATA custom metadata with activation NONE, as the sigmoid is in the graph.
    """
    return _model_metadata(
        spec,
        title=f"edgederm {spec.arch} skin-lesion segmenter",
        description="Outlines the lesion in a dermoscopy image: per-pixel lesion probabilities. Not a medical device.",
        subgraph="image_segmenter",
        labels="The class of each output channel, one per line: the lesion.",
        output=_mask_tensor,
        custom={_SEGMENTER_METADATA: _segmenter_options()},
    )


def _model_metadata(
    spec: ModelSpec,
    *,
    title: str,
    description: str,
    subgraph: str,
    labels: str,
    output: Callable[[Any, int], int],
    custom: dict[str, bytes] | None = None,
) -> bytes:
    """One subgraph: the image input, ``output(builder, labels_file)``, and ``custom`` metadata by name."""
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    labels_file = _associated_file(builder, LABELS_FILE, labels, _TENSOR_AXIS_LABELS)
    spec_file = _associated_file(builder, SPEC_FILE, "The edgederm ModelSpec: preprocessing, classes, calibration, export.", _DESCRIPTIONS)
    fields = {
        0: builder.CreateString(subgraph),
        2: _vector(builder, [_image_tensor(builder, spec)]),
        3: _vector(builder, [output(builder, labels_file)]),
    }
    if custom:
        entries = [_table(builder, {0: builder.CreateString(name), 1: _bytes(builder, data)}) for name, data in custom.items()]
        fields[9] = _vector(builder, entries)
    root = _table(
        builder,
        {
            0: builder.CreateString(title),
            1: builder.CreateString(description),
            2: builder.CreateString(f"edgederm {spec.edgederm_version}, weights sha256 {spec.source_sha256 or 'unknown'}"),
            3: _vector(builder, [_table(builder, fields)]),
            4: builder.CreateString("edgederm"),
            6: _vector(builder, [spec_file]),
            7: builder.CreateString(_CUSTOM_METADATA_PARSER_VERSION if custom else _METADATA_PARSER_VERSION),
        },
    )
    builder.Finish(root, file_identifier=_METADATA_IDENTIFIER)
    return bytes(builder.Output())


def _image_tensor(builder: Any, spec: ModelSpec) -> int:
    """The RGB image input with the normalisation the file's input wants (``spec`` is the artifact's)."""
    given = spec.input_preprocess
    side, mean, std = given.input_size, np.asarray(given.mean), np.asarray(given.std)
    normalization = _table(builder, {0: _floats(builder, 255 * mean), 1: _floats(builder, 255 * std)})
    content = _table(builder, {1: _table(builder, {}, {0: _RGB})}, {0: _IMAGE_PROPERTIES})
    return _table(
        builder,
        {
            0: builder.CreateString("image"),
            1: builder.CreateString(f"RGB image, {side}x{side} ({given.resize} in edgederm), as (pixel - mean) / std."),
            3: content,
            4: _vector(builder, [_table(builder, {1: normalization}, {0: _NORMALIZATION_OPTIONS})]),
            5: _table(builder, {0: _floats(builder, (1 - mean) / std), 1: _floats(builder, -mean / std)}),
        },
    )


def _scores_tensor(builder: Any, labels: int) -> int:
    content = _table(builder, {1: _table(builder, {})}, {0: _FEATURE_PROPERTIES})
    description = "Class probabilities (softmax in the graph), in the order of labels.txt."
    return _probabilities_tensor(builder, "probabilities", description, content, labels)


def _mask_tensor(builder: Any, labels: int) -> int:
    # A grayscale image over dimensions 1-2 (height, width) of the (1, S, S, 1) output, as MediaPipe's SegmentationMaskMd.
    content = _table(builder, {1: _table(builder, {}, {0: _GRAYSCALE}), 2: _table(builder, {}, ints={0: 1, 1: 2})}, {0: _IMAGE_PROPERTIES})
    description = "Lesion probability per pixel (sigmoid in the graph), (1, S, S, 1); edgederm thresholds it as its spec says."
    return _probabilities_tensor(builder, "mask_probabilities", description, content, labels)


def _probabilities_tensor(builder: Any, name: str, description: str, content: int, labels: int) -> int:
    return _table(
        builder,
        {
            0: builder.CreateString(name),
            1: builder.CreateString(description),
            3: content,
            5: _table(builder, {0: _floats(builder, [1.0]), 1: _floats(builder, [0.0])}),
            6: _vector(builder, [labels]),
        },
    )


def _segmenter_options() -> bytes:
    """MediaPipe's ImageSegmenterOptions flatbuffer: activation NONE (the default, so an empty table)."""
    import flatbuffers

    builder = flatbuffers.Builder(16)
    builder.Finish(_table(builder, {}, {0: _ACTIVATION_NONE}), file_identifier=_SEGMENTER_IDENTIFIER)
    return bytes(builder.Output())


def _associated_file(builder: Any, name: str, description: str, kind: int) -> int:
    return _table(builder, {0: builder.CreateString(name), 1: builder.CreateString(description)}, {2: kind})


def _table(builder: Any, offsets: dict[int, int], small: dict[int, int] | None = None, ints: dict[int, int] | None = None) -> int:
    """A table from field slots: ``offsets`` to strings, vectors and tables built before it, ``small`` to byte enums, ``ints`` to int32s."""
    small, ints = small or {}, ints or {}
    builder.StartObject(1 + max([*offsets, *small, *ints], default=-1))
    for slot, offset in offsets.items():
        builder.PrependUOffsetTRelativeSlot(slot, offset, 0)
    for slot, value in ints.items():
        builder.PrependInt32Slot(slot, value, 0)
    for slot, value in small.items():
        builder.PrependUint8Slot(slot, value, 0)
    return builder.EndObject()


def _vector(builder: Any, offsets: list[int]) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _bytes(builder: Any, data: bytes) -> int:
    """A [ubyte] vector aligned to 16 bytes (CustomMetadata.data's force_align: it holds a flatbuffer)."""
    builder.StartVector(1, len(data), 16)
    builder.head -= len(data)
    builder.Bytes[builder.head : builder.head + len(data)] = data
    return builder.EndVector()


def _floats(builder: Any, values: Any) -> int:
    return builder.CreateNumpyVector(np.asarray(values, np.float32))


def with_associated_files(model: bytes, files: dict[str, bytes]) -> bytes:
    """The model with ``files`` zipped onto its end, where TFLite Metadata readers look for associated files."""
    buffer = io.BytesIO(model)
    with zipfile.ZipFile(buffer, "a") as archive:  # not yet a zip: zipfile appends a new archive after the flatbuffer
        for name, data in files.items():
            # a fixed timestamp: the same model and files give the same bytes whenever they are exported
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()
