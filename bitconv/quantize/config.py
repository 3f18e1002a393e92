"""Conversion options: `QuantConfig` (frozen, versioned, serialised into config.json) and the option parsers
every command shares, so `--bits`, `--granularity`, `--keep-outliers` and sizes read the same everywhere."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, replace

from bitconv.errors import OptionError
from bitconv.format.vocab import BITS_TO_SCHEME

CONFIG_VERSION = 1
SCALE_METHODS = ("absmean", "absmax", "median", "mse")
DEFAULT_GROUP_SIZE = 64

def parse_bits(value: str | float) -> float:
    try:
        bits = float(value)
    except (TypeError, ValueError):
        bits = math.nan
    for known in BITS_TO_SCHEME:
        if abs(bits - known) < 1e-6:
            return known
    raise OptionError(f"unknown --bits {value!r}: choose one of 16, 8, 4, 2, 1.58, 1")


def parse_granularity(value: str) -> tuple[str, int | None]:
    """'tensor' | 'channel' | 'group:N' -> (granularity, group_size)."""
    m = re.fullmatch(r"group(?::(\d+))?", value)
    if m:
        size = int(m.group(1) or DEFAULT_GROUP_SIZE)
        if size < 1:
            raise OptionError(f"--granularity {value}: the group size must be at least 1")
        return "group", size
    if value in ("tensor", "channel"):
        return value, None
    raise OptionError(f"unknown --granularity {value!r}: use tensor, channel or group:N (e.g. group:64)")


def parse_fraction(value: str | float) -> float:
    """'0.1%' -> 0.001, '0.001' -> 0.001."""
    text = str(value).strip()
    try:
        frac = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise OptionError(f"cannot read {value!r} as a fraction: write e.g. 0.1% or 0.001") from None
    if not 0 <= frac < 1:
        raise OptionError(f"{value!r} is not a fraction between 0 and 1")
    return frac


def check_config_version(d: dict, current: int, what: str) -> None:
    """Refuse a serialised config written by a newer bitconv (its fields may mean something this one cannot do)."""
    version = d.get("config_version", current)
    if not isinstance(version, int) or version > current:
        raise OptionError(f"{what} of config_version {version!r}: this bitconv reads version {current} and older; "
                          "upgrade bitconv (pip install -U bitconv)")


@dataclass(frozen=True)
class QuantConfig:
    """Every option of a conversion; serialised into config.json's quantization_config."""

    bits: float = 1.58
    granularity: str = "tensor"
    group_size: int | None = None
    scale_method: str = "absmean"
    packing: str = "2bit"
    keep_outliers: float = 0.0
    embeddings: str = "fp16"
    activations: str = "none"
    keep: tuple[str, ...] = field(default_factory=tuple)
    only: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bits", parse_bits(self.bits))
        object.__setattr__(self, "keep_outliers", parse_fraction(self.keep_outliers))
        object.__setattr__(self, "keep", tuple(self.keep))
        object.__setattr__(self, "only", tuple(self.only))
        if self.scale_method not in SCALE_METHODS:
            raise OptionError(f"unknown --scale {self.scale_method!r}: use one of {', '.join(SCALE_METHODS)}")
        if self.packing not in ("2bit", "base3"):
            raise OptionError(f"unknown --packing {self.packing!r}: use 2bit or base3")
        if self.packing == "base3" and self.scheme != "ternary":
            raise OptionError("--packing base3 is only for --bits 1.58")
        if self.embeddings not in ("fp16", "int8"):
            raise OptionError(f"unknown --embeddings {self.embeddings!r}: use fp16 or int8")
        if self.activations not in ("none", "int8"):
            raise OptionError(f"unknown --activations {self.activations!r}: use none or int8")
        if self.scheme in ("uint4", "uint2") and self.granularity != "group":
            raise OptionError(f"--bits {self.bits:g} is asymmetric per group: use --granularity group:N (default group:64)")
        if self.granularity == "group" and not self.group_size:
            raise OptionError("group granularity needs a group size, e.g. --granularity group:64")

    @classmethod
    def for_bits(cls, bits: float | str = 1.58, granularity: str | None = None, **kwargs) -> "QuantConfig":
        """The config for a width with its scheme's defaults: ternary/binary per tensor, int8 per channel, 4/2-bit
        per group of 64. `granularity` is written as on the command line (tensor | channel | group:N); the other
        keywords are fields (`QuantConfig.for_bits(1.58, "group:64", keep_outliers="0.1%")`)."""
        scheme = BITS_TO_SCHEME[parse_bits(bits)]
        if granularity is None:
            granularity = {"int8": "channel", "uint4": "group", "uint2": "group"}.get(scheme, "tensor")
        gran, size = parse_granularity(granularity)
        return cls(bits=parse_bits(bits), granularity=gran, group_size=size, **kwargs)

    @property
    def scheme(self) -> str:
        return BITS_TO_SCHEME[self.bits]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["keep"], d["only"] = list(self.keep), list(self.only)
        d["config_version"] = CONFIG_VERSION
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "QuantConfig":
        """The config recorded in a quantization_config (other keys there, such as the source, are ignored)."""
        check_config_version(d, CONFIG_VERSION, "quantization options")
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})

    def with_(self, **changes) -> "QuantConfig":
        return replace(self, **changes)


UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB|TB)?\s*", str(text).upper())
    if not m:
        raise OptionError(f"cannot read size {text!r}: write e.g. 2GB or 500MB")
    return int(float(m.group(1)) * UNITS.get(m.group(2) or "", 1))
