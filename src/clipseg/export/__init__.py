"""Export to ONNX (`export_onnx_model`, `clipseg export-onnx`) and run the graphs with onnxruntime (`OnnxModel`)."""
