"""ONNX Runtime: its formats (``ort-int8`` dynamic int8, ``ort-int4`` MatMulNBits: :mod:`.formats`), the kernels they
are simulated with (:mod:`.ort_lib`), and the ``onnx`` export target (:mod:`.writer`, checked by :mod:`.onnx_check`)."""

from quantsense.backends.onnxruntime import formats, writer  # noqa: F401  (registers the formats and the onnx target)
from quantsense.backends.onnxruntime import checks  # noqa: F401  (its export checks, per task)
from quantsense.backends.onnxruntime.formats import OrtFormat

__all__ = ["OrtFormat"]
