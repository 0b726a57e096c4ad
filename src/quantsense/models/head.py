"""What a task needs a model to end in (imported without torch, so the CLI can list tasks cheaply)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelHead:
    """What a task needs the model to end in: the transformers Auto class that builds it, the head in words,
    and whether GGUF files (which hold language models only) can provide it. Each task declares one."""

    auto_class: str  # e.g. "AutoModelForSequenceClassification"
    description: str  # e.g. "classification head"
    from_gguf: bool = False

    def auto(self):
        import transformers

        return getattr(transformers, self.auto_class)
