"""The packed format (formats/SPEC.md), owned here and nowhere else.

    vocab        names, versions, suffixes, schemes, the dtype table, tensor categories, side files
    spec         a quantized weight's entry (TensorSpec) and planned tensors / files
    packing      bit packing of codes (2-bit, base-3, 1/4/8-bit)
    layouts      the byte layouts of other targets: MatMulNBits, ggml TQ2_0 / TQ1_0, HF BitNet
    safetensors  the streaming writer, the strict header reader, shards
    reader       a bitconv folder: specs, stored tensors, config.json
    atomic       every file and folder bitconv writes: temporary name, then rename
    summary      the per-tensor table of `bitconv inspect`
"""
