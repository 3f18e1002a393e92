"""bitconv: turn transformer checkpoints into packed ternary (1.58-bit) models, recover and measure them.

    import bitconv
    bitconv.convert("gpt2", "gpt2-1.58", bitconv.QuantConfig.for_bits(1.58))
    model = bitconv.load("gpt2-1.58")

The package is laid out by job, one owner each: `format` (the packed format), `quantize` (configs, schemes,
plans, sources, convert, torch modules, load), `train` (recover), `data` (reading data sets), `evaluate`,
`report`, `export`, `ort` (the ONNX Runtime op library), `hub` and `cli`.
"""

__version__ = "0.1.0"
__all__ = ["convert", "load", "QuantConfig", "RecoverConfig", "recover", "__version__"]

# imported lazily so that `import bitconv` (and the CLI's --help) does not pay for torch and transformers
_LAZY = {
    "convert": ("bitconv.quantize.convert", "convert"),
    "load": ("bitconv.quantize.modeling", "load"),
    "QuantConfig": ("bitconv.quantize.config", "QuantConfig"),
    "RecoverConfig": ("bitconv.train.config", "RecoverConfig"),
    "recover": ("bitconv.train.pipeline", "recover"),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'bitconv' has no attribute {name!r}")
    import importlib

    module, attr = _LAZY[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value
