"""torchao: the ``torchao`` export target (:mod:`.writer`: a transformers checkpoint of the integer formats, checked
in a fresh process by :mod:`.torchao_check`)."""

from quantsense.backends.torchao import writer  # noqa: F401  (registers the torchao target)
from quantsense.backends.torchao import checks  # noqa: F401  (its export checks, per task)
