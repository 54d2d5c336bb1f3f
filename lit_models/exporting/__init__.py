"""Export for use elsewhere: safetensors + config.json + tokenizer.json, ONNX, ONNX int8.

``exporter.export`` is the one entry point (``lhp export``); ``safetensors_dir`` writes and reads
the safetensors directory (also the H2Q store's ``export_safetensors`` writer, and what
``lit_models.checkpoints.load_checkpoint`` reads for a directory); ``onnx_models`` holds the
graph wrappers, ONNX Runtime inference and the parity check. See docs/export.md.
"""
