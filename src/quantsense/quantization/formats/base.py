"""The format registry: one entry per format family, modelled on ggml's type traits and torchao's handlers.

A family is a frozen dataclass subclassing :class:`WeightFormat`, registered with :func:`register_format`.
Its class answers everything the rest of quantsense asks about a format, so nothing outside the entry
asks which kind of format it holds:

- parsing: :meth:`WeightFormat.parse` (a name a user types) and :meth:`WeightFormat.claims` /
  ``from_dict`` (a plan file entry);
- numerics: ``fake_quantize`` (weights), ``storage_bits`` (its own cost, scales included), ``with_imatrix`` (the
  same format weighting its rounding by an importance matrix, where its quantizer takes one);
- shape rules: ``check_shape`` per weight, ``check_model`` for rules that hold for every layer;
- needs: ``needs`` (optional packages or calibration data) and ``export_targets`` (the writers that
  can store it: ``torchao``, ``gguf``);
- words: ``label()``, ``glossary()``, ``describe()`` (what results.json keeps, with ``to_dict``);
- strategies: ``levels()``, the reference study's (high, mid, low) formats in this family, or None.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, ClassVar

from quantsense.errors import QuantsenseError

if TYPE_CHECKING:
    import torch


class WeightFormat:
    """Base of every format family; instances are immutable and hashable (equal formats are one key)."""

    family: ClassVar[str]  # registry key, e.g. "int" or "gguf"
    vocabulary: ClassVar[str]  # what a user may type for this family, for error messages and --help
    export_targets: ClassVar[tuple[str, ...]] = ()  # writers that can store it ("torchao", "gguf")
    needs: ClassVar[tuple[str, ...]] = ()  # what using it requires beyond quantsense (a package, an imatrix)
    takes_scheme: ClassVar[bool] = False  # whether its names take the integer grid (--asymmetric, --weight-granularity)
    rows_independent: ClassVar[bool] = False  # each stored row quantized on its own: any subset of rows quantizes alike

    # -- parsing ------------------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, scheme) -> "WeightFormat | None":
        """The format ``text`` (lower-cased, stripped) names in this family, else None."""
        raise NotImplementedError

    @classmethod
    def claims(cls, data: dict) -> bool:
        """Whether a plan file entry without a 'format' name is this family's own fields (e.g. 'bits')."""
        return False

    @classmethod
    def from_dict(cls, data: dict, where: str = "config") -> "WeightFormat":
        raise NotImplementedError

    def to_dict(self) -> dict:
        """The plan file entry; by default the name (``{"format": "q4_0"}``), read back by :func:`format_from_dict`."""
        return {"format": self.name}

    # -- identity and words -------------------------------------------------------------------
    @property
    def name(self) -> str:
        raise NotImplementedError

    def label(self) -> str:
        return self.name

    @property
    def nominal_bits(self) -> float:
        """Bits per weight for ordering formats and naming strategies."""
        raise NotImplementedError

    @property
    def code_bits(self) -> int:
        """Bits of one weight's code, scales not counted (int4 and q4_0: 4, f16: 16): picks a plot colour."""
        raise NotImplementedError

    @property
    def variant(self) -> str:
        """A shade within one code width ('' for the plain variant, '1' for q4_1...): picks a plot shade."""
        return ""

    @classmethod
    def glossary(cls, scheme=None) -> tuple[str, str]:
        """(term, explanation) for this family in report glossaries."""
        raise NotImplementedError

    def describe(self, scheme=None) -> dict:
        """Plain data for results.json: everything summaries, plots and reports need about this format."""
        term, text = self.glossary(scheme)
        return {
            "name": self.name,
            "family": self.family,
            "spec": self.to_dict(),
            "label": self.label(),
            "bits_per_weight": self.nominal_bits,
            "code_bits": self.code_bits,
            "variant": self.variant,
            "export_targets": list(self.export_targets),
            "takes_scheme": self.takes_scheme,
            "glossary": [term, text],
        }

    # -- numerics and shapes ------------------------------------------------------------------
    def fake_quantize(self, weight: "torch.Tensor", transposed: bool = False) -> "torch.Tensor":
        raise NotImplementedError

    def quantize_weight(
        self, weight: "torch.Tensor", transposed: bool, tensor: str, kind: str = "linear"
    ) -> "torch.Tensor":
        """The named module's weight quantized and read back (what a plan applies): ``fake_quantize`` unless the
        format uses per-tensor data such as an importance matrix, or quantizes an embedding (``kind``) its own way."""
        return self.fake_quantize(weight, transposed=transposed)

    def input_quantizer(self, kind: str = "linear"):
        """A function applied to a planned module's input (activation quantization, e.g. ONNX Runtime's dynamic int8),
        or None: most formats quantize weights only."""
        return None

    def activation_rounding(self):
        """What the format's runtime does to a linear's input when it multiplies by a weight of this format (llama.cpp
        rounds it to 8-bit blocks), applied only when a workspace simulates the runtime's activations
        (``runtime_activations``); None where the runtime computes with the input as it is."""
        return None

    # -- calibration ----------------------------------------------------------------------------
    def with_imatrix(self, imatrix) -> "WeightFormat":
        """This format weighting its rounding by ``imatrix`` (:mod:`quantsense.backends.llama_cpp.imatrix`) where its
        quantizer takes one (llama.cpp's do), else itself unchanged."""
        return self

    def with_named_imatrix(self, fingerprint, where: str = "config") -> "WeightFormat":
        """This format bound to the imatrix a plan entry names by fingerprint (``"imatrix": FINGERPRINT``), which must
        be loaded already; refused for a format that takes none."""
        raise QuantsenseError(f"{where}: {self.name} does not use an importance matrix; remove its 'imatrix' key")

    def importance(self, tensor: str):
        """The per-column weights this format quantizes ``tensor`` with (its bound imatrix's), or None."""
        return None

    def calibration(self):
        """The imatrix this format is bound to, or None (an exporter writes its provenance)."""
        return None

    def storage_bits(self, shape: tuple[int, ...], transposed: bool = False) -> int:
        raise NotImplementedError

    def unit_storage_bits(self, unit) -> int:
        """Bits to store one unit (:class:`~quantsense.models.units.Unit`) in this format: ``storage_bits`` of its shape
        unless the format stores an embedding differently."""
        return self.storage_bits(unit.shape, unit.transposed)

    def check_shape(self, shape: tuple[int, ...], transposed: bool = False, where: str = "weight") -> None:
        """Refuse a weight this format cannot store (the allocator then leaves it out for that unit)."""

    def check_unit(self, unit) -> None:
        """Refuse a unit (:class:`~quantsense.models.units.Unit`) this format cannot store: its shape, and for a format that
        treats embeddings or heads its own way, its kind."""
        self.check_shape(unit.shape, unit.transposed, where=unit.name)

    def check_model(self, units, named: bool) -> None:
        """Refuse, before any work, a format that must fit every block linear weight and does not.
        ``named``: the format came from a name (so the message can point at the flag that shaped it)."""

    # -- strategies ---------------------------------------------------------------------------
    @classmethod
    def levels(cls, scheme) -> "tuple[WeightFormat, WeightFormat, WeightFormat] | None":
        """The reference study's (high, mid, low) formats in this family (int8/int6/int4 for the integer grid)."""
        return None

    def check_export(self, target: str, unit: str) -> None:
        """Refuse writing this format with ``target`` when its entry does not list that writer, naming what it writes."""
        if target not in self.export_targets:
            writes = [cls.vocabulary for cls in FORMAT_FAMILIES.values() if target in cls.export_targets]
            raise QuantsenseError(
                f"unit {unit} is planned as {self.name}, which the {target} export cannot write; plan it "
                f"in {' or '.join(writes) if writes else 'a format this export writes'}, or leave it "
                "out of the plan (FP32)"
            )


FORMAT_FAMILIES: dict[str, type[WeightFormat]] = {}
BACKENDS = "quantsense.backends"  # the folder of runtime packages, each registering its formats and export target


@functools.cache
def load_backends() -> None:
    """Import every runtime package under :data:`BACKENDS` once, in name order (each registers its formats and export
    target): the one way the core reaches a runtime, by discovery as a plugin system would, never by name. Later
    calls return at once (the folder is scanned once per process)."""
    import importlib
    import pkgutil

    package = importlib.import_module(BACKENDS)
    for found in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if found.ispkg:
            importlib.import_module(f"{BACKENDS}.{found.name}")


def register_format(cls: type[WeightFormat]) -> type[WeightFormat]:
    """Add a family to the registry (a decorator); later families are asked after earlier ones (a family from outside
    quantsense comes after every runtime's: those are registered first)."""
    if not cls.__module__.startswith("quantsense."):
        load_backends()
    FORMAT_FAMILIES[cls.family] = cls
    return cls


def format_families() -> dict[str, type[WeightFormat]]:
    """Every registered family by name, the runtimes' included: they register when first asked for, not when this
    module is imported (a runtime's modules import the plan and format modules themselves)."""
    load_backends()
    return FORMAT_FAMILIES


def format_vocabulary() -> str:
    """What a user may type, every registered family's words: for messages and --help."""
    words = [cls.vocabulary for cls in format_families().values()]
    return ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else words[0]


def parse_format(text, scheme=None) -> WeightFormat:
    """A format from what a user types (``4``, ``int4``, ``q4_0``...), asking each registered family in turn.

    ``scheme`` is the integer grid ``int<b>`` names use (default: symmetric per-channel)."""
    if isinstance(text, WeightFormat):
        return text
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise QuantsenseError(f"a format is a name or a number of bits (e.g. 'int4', 4, 'q4_0'), got {text!r}")
    value = str(text).strip().lower()
    for cls in format_families().values():
        fmt = cls.parse(value, scheme)
        if fmt is not None:
            return fmt
    raise QuantsenseError(f"unknown format {text!r}; use {format_vocabulary()}")


def format_from_dict(data, where: str = "config") -> WeightFormat:
    """A plan file entry: ``{"format": NAME}`` (any registered name), or a family's own fields
    (``{"bits": 4, "symmetric": true, ...}``) read by the family that claims them."""
    if isinstance(data, dict) and "format" in data:
        extra = sorted(set(data) - {"format", "imatrix"})
        if extra:
            raise QuantsenseError(f"{where}: unknown key(s) {', '.join(extra)} beside 'format'")
        try:
            fmt = parse_format(data["format"])
        except QuantsenseError as exc:
            raise QuantsenseError(f"{where}: {exc}") from None
        return fmt.with_named_imatrix(data["imatrix"], where) if "imatrix" in data else fmt
    if isinstance(data, dict):
        for cls in format_families().values():
            if cls.claims(data):
                return cls.from_dict(data, where)
    raise QuantsenseError(f"{where}: expected an object with 'bits' or 'format', got {data!r}")


def format_levels(fmt: WeightFormat, scheme) -> tuple[WeightFormat, WeightFormat, WeightFormat] | None:
    """The reference strategies' three levels in ``fmt``'s family, or None where the family defines none."""
    return type(fmt).levels(scheme)


Format = WeightFormat  # the type every format is (kept as the name the rest of the code uses)
