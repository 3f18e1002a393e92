"""bitconv: turn transformer checkpoints into packed ternary (1.58-bit) models, recover and measure them.

    import bitconv
    bitconv.convert("gpt2", "gpt2-1.58", bits=1.58)
    model = bitconv.load("gpt2-1.58")
"""

__version__ = "0.1.0"
__all__ = ["convert", "load", "__version__"]


def __getattr__(name):
    # imported lazily so that `import bitconv` (and the CLI's --help) does not pay for torch and transformers
    if name == "convert":
        from bitconv.converter import convert as function
    elif name == "load":
        from bitconv.modeling import load as function
    else:
        raise AttributeError(f"module 'bitconv' has no attribute {name!r}")
    globals()[name] = function
    return function
