"""Export converters, installed as ``edgederm.converters``: one module per format (TFLite, ONNX,
CoreML) with its quantization. They land with the converters issue; nothing is exported yet."""
