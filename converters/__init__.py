"""Export converters, installed as ``edgederm.converters``: one module per format (tflite, onnx,
coreml) with its quantization, and the helpers they share (calibration images, activation ranges,
the accuracy-aware int8 search, metadata). ``edgederm.core.formats`` is the table that names them."""
