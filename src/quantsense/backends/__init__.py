"""One package per runtime: everything quantsense knows about llama.cpp, ONNX Runtime and torchao lives in one folder.

A backend (``backends/<runtime>/``) is a package whose ``__init__`` registers what the runtime brings, with the same
decorators every extension uses:

- its weight formats (``@register_format``, :mod:`quantsense.quantization.formats.base`): names, numerics, sizes;
- its export target (``@register_exporter``, :mod:`quantsense.exporters.base`): the writer and its fresh-process check.

Nothing outside a backend's folder imports it by name: the format registry imports every package in this folder once,
in name order, when :mod:`quantsense.quantization.formats` is first imported
(:func:`~quantsense.quantization.formats.base.load_backends`), as a plugin system would. A fourth runtime is one new
folder here (``tests/toys/toy_backend`` is a worked example, registered from outside the package).
"""
