"""llama.cpp: its weight types, their quantizers, the importance matrix, the presets, and the GGUF file.

- types and numerics: :mod:`.gguf_quants` (the legacy types' reference quantizers in torch), :mod:`.ggml_lib` (ggml's
  own quantizer through ctypes), :mod:`.activations` (the rounding of activations in its CPU dot products);
- formats: :mod:`.formats` (``q8_0 .. q4_0 f16 bf16`` and ``q2_K .. q6_K iq4_nl iq4_xs``, weighted by an imatrix);
- calibration: :mod:`.imatrix` (collect), :mod:`.imatrix_file` (llama.cpp's imatrix.gguf), :mod:`.calibrate`;
- presets and plans: :mod:`.presets` (llama-quantize's rules), :mod:`.plans` (a preset as a plan, a plan as tensors);
- files: :mod:`.gguf_file` (write and size), :mod:`.gguf_convert`, :mod:`.llama_quantize` (the C API),
  :mod:`.writer` (the ``gguf`` export target), :mod:`.gguf_check` and :mod:`.llama_score` (checks in llama.cpp);
- the one-command path: :mod:`.quantize` (``quantsense quantize``).
"""

from quantsense.backends.llama_cpp import formats, imatrix_file, presets, writer  # noqa: F401  (registers each of them)
from quantsense.backends.llama_cpp import checks  # noqa: F401  (its export checks, per task)
