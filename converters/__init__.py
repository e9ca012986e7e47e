"""Export converters, installed as ``edgederm.converters``: one module per format (tflite, with its metadata
writer tflite_metadata; onnx; coreml; executorch) with its quantization, and the helpers they share (the job and its
conversion steps, calibration images, activation ranges, bias correction, the accuracy-aware int8 search).
``edgederm.core.formats`` is the table that names them."""
