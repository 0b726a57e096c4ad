"""What llama.cpp's two format families share: quantizers that weight their rounding by an importance matrix.

:class:`ImatrixWeighted` is mixed into :class:`~quantsense.backends.llama_cpp.formats.legacy.GGUFFormat` and
:class:`~quantsense.backends.llama_cpp.formats.ggml.GGMLFormat`. A format bound to an imatrix (``fmt.with_imatrix(m)``,
done by a workspace given ``--imatrix``) quantizes each tensor that the imatrix covers through ggml's own
``ggml_quantize_chunk`` with that tensor's weights, as ``llama-quantize --imatrix`` does; its plan entry names the
imatrix by fingerprint, so a stored result or a plan file never mixes it up with the unweighted format.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from quantsense.backends.llama_cpp.ggml_types import TYPES
from quantsense.errors import QuantsenseError

if TYPE_CHECKING:
    import torch


class ImatrixWeighted:
    """Mixin for a frozen dataclass with fields ``format`` (the ggml type name) and ``imatrix`` (or None)."""

    rows_independent = True  # ggml quantizes each row alone (blocks along the row; the imatrix weighs columns)

    def with_imatrix(self, imatrix):
        if imatrix is None or not TYPES[self.format].uses_imatrix or self.imatrix == imatrix:
            return self
        return dataclasses.replace(self, imatrix=imatrix)

    def with_named_imatrix(self, fingerprint, where: str = "config"):
        from quantsense.backends.llama_cpp.imatrix import known

        found = known(str(fingerprint))
        if found is None:
            raise QuantsenseError(
                f"{where}: {self.name} was planned with imatrix {fingerprint}; pass --imatrix FILE with "
                "the importance matrix it was made with"
            )
        bound = self.with_imatrix(found)
        if bound is self:
            raise QuantsenseError(f"{where}: {self.name} does not use an importance matrix; remove its 'imatrix' key")
        return bound

    def to_dict(self) -> dict:
        entry = {"format": self.format}
        return {**entry, "imatrix": self.imatrix.fingerprint} if self.imatrix is not None else entry

    def label(self) -> str:
        return f"{self.format}+imatrix" if self.imatrix is not None else self.format

    def describe(self, scheme=None) -> dict:
        found = super().describe(scheme)
        return {**found, "imatrix": self.imatrix.fingerprint} if self.imatrix is not None else found

    def importance(self, tensor: str):
        return self.imatrix.weights(tensor) if self.imatrix is not None and tensor is not None else None

    def calibration(self):
        return self.imatrix

    def activation_rounding(self):
        """llama.cpp's rounding of this type's inputs in its CPU dot products (:mod:`..llama_activations`)."""
        from quantsense.backends.llama_cpp.activations import rounding_for

        return rounding_for(self.format)

    def quantize_weight(
        self, weight: torch.Tensor, transposed: bool, tensor: str, kind: str = "linear"
    ) -> torch.Tensor:
        """``weight`` through ggml's quantizer with ``tensor``'s imatrix weights; without any (no imatrix bound, or
        none for this tensor) the unweighted quantizer, as in llama-quantize."""
        weights = self.importance(tensor)
        if weights is None:
            return self.fake_quantize(weight, transposed=transposed)
        import torch

        from quantsense.backends.llama_cpp import ggml_lib

        rows = (weight.detach().t() if transposed else weight.detach()).to(torch.float32).cpu().numpy()
        out = torch.from_numpy(ggml_lib.fake_quantize(self.format, rows, weights))
        out = out.t() if transposed else out
        return out.to(device=weight.device, dtype=weight.dtype).contiguous()
