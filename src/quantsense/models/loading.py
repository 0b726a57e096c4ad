"""Model loading from a Hugging Face hub id, a local directory or a GGUF file, always in fp32."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from quantsense.errors import QuantsenseError

TASK_KINDS = ("classification", "causal")


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise QuantsenseError(f"--device {name} was asked for but no CUDA GPU is available; use --device cpu or auto")
        return torch.device(name)
    raise QuantsenseError(f"unknown device {name!r}; use auto, cpu or cuda")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: str
    kind: str
    device: torch.device
    dtype: str = "float32"

    @property
    def id2label(self) -> dict[int, str]:
        mapping = getattr(self.model.config, "id2label", None) or {}
        return {int(k): v for k, v in mapping.items()}


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or source.endswith(".gguf")


def _auto_class(kind: str):
    import transformers

    if kind == "classification":
        return transformers.AutoModelForSequenceClassification
    return transformers.AutoModelForCausalLM


def _load_pretrained(source: str, kind: str, gguf_file: str | None, local_only: bool):
    import transformers

    kwargs = {"local_files_only": True} if local_only else {}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    model = _auto_class(kind).from_pretrained(source, dtype=torch.float32, **kwargs)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, **kwargs)
    return model, tokenizer


def _hub_reachable() -> bool:
    """A fast DNS check of the hub's host, so an offline machine fails at once rather than after retries."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _hub_error(source: str) -> QuantsenseError:
    return QuantsenseError(
        f"could not load {source!r} from the Hugging Face hub (offline or unknown id); "
        "download it and pass the local directory with --model PATH"
    )


def load_model(source: str, kind: str = "classification", device: str | torch.device = "auto", dtype: str = "auto") -> LoadedModel:
    """Load ``source`` (hub id, local directory, or ``.gguf`` file) for ``kind`` in fp32, eval mode."""
    if kind not in TASK_KINDS:
        raise QuantsenseError(f"unknown model kind {kind!r}; use one of {', '.join(TASK_KINDS)}")
    device = device if isinstance(device, torch.device) else resolve_device(device)
    path = Path(os.path.expanduser(source))
    gguf_file = None
    local_only = True
    if path.is_file() and path.suffix == ".gguf":
        load_from, gguf_file = str(path.parent), path.name
    elif path.is_dir():
        if not (path / "config.json").is_file() and not list(path.glob("*.gguf")):
            raise QuantsenseError(f"model directory {source} has no config.json; point --model at a saved Hugging Face model")
        ggufs = sorted(path.glob("*.gguf")) if not (path / "config.json").is_file() else []
        load_from, gguf_file = str(path), (ggufs[0].name if ggufs else None)
    elif _looks_like_path(source):
        raise QuantsenseError(f"model path {source} does not exist; pass a local model directory or a hub id with --model")
    else:
        load_from = source
        local_only = not _hub_reachable()  # offline: a cached copy still loads, and nothing retries
    try:
        model, tokenizer = _load_pretrained(load_from, kind, gguf_file, local_only)
    except (OSError, ValueError) as exc:
        if path.exists():
            raise QuantsenseError(f"could not load model from {source}: {str(exc).splitlines()[0]}") from None
        raise _hub_error(source) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device).eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, kind=kind, device=device)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes): identifies the exact weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()[:16]
