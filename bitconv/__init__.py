"""bitconv: turn transformer checkpoints into packed ternary (1.58-bit) models, recover and measure them.

    import bitconv
    bitconv.convert("gpt2", "gpt2-1.58", bitconv.QuantConfig.for_bits(1.58))
    model = bitconv.load("gpt2-1.58")
    # or, after `import bitconv`, plain transformers: AutoModelForCausalLM.from_pretrained("gpt2-1.58")

The package is laid out by job, one owner each: `format` (the packed format), `quantize` (configs, schemes,
plans, sources, convert, torch modules, load), `train` (recover), `data` (reading data sets), `evaluate`,
`report`, `export`, `ort` (the ONNX Runtime op library), `hub` and `cli`.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys

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


# transformers learns `quant_method: bitconv` from bitconv's quantizer (bitconv.quantize.hf_quantizer). Registering
# needs transformers' quantizers, which take seconds to import, so `import bitconv` does not import them: it registers
# right after transformers itself imports them (any from_pretrained does), or now if that already happened.
_QUANTIZERS = "transformers.quantizers.auto"


def _register_quantizer() -> None:
    # importing the module registers it; when that import is what imported transformers' quantizers, the module is
    # still half-run here and registers at its own end
    importlib.import_module("bitconv.quantize.hf_quantizer")


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds transformers' quantizer module as the normal path finder does, and registers bitconv once it has run."""

    def find_spec(self, fullname, path, target=None):
        if fullname != _QUANTIZERS:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            run_module = spec.loader.exec_module

            def run_then_register(module):
                run_module(module)
                _register_quantizer()

            spec.loader.exec_module = run_then_register
        return spec


if _QUANTIZERS in sys.modules:
    _register_quantizer()
elif not any(isinstance(finder, _RegisterAfterImport) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterImport())
