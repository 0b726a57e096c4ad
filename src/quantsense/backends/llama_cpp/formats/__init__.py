"""llama.cpp's two format families, registered in this order: the legacy types (:mod:`.legacy`), then ggml's K and IQ
types (:mod:`.ggml`); both weight their rounding by an importance matrix (:mod:`.weighted`)."""

from quantsense.backends.llama_cpp.formats.legacy import GGUFFormat, gguf_format_names
from quantsense.backends.llama_cpp.formats.ggml import GGMLFormat  # noqa: E402  (registered after the legacy types)

__all__ = ["GGMLFormat", "GGUFFormat", "gguf_format_names"]
