"""bitconv: turn transformer checkpoints into packed ternary (1.58-bit) models, recover and measure them."""

__version__ = "0.1.0"
