"""Model loading from a Hugging Face hub id, a local directory or a GGUF file, safetensors only.

A model is refused, in one line, when its files cannot be read, when its weights are pickled
(pickle files can execute code), when it asks to run its own Python code (``auto_map``: quantsense
passes ``trust_remote_code=False`` everywhere and never prompts), when its tokenizer is missing, or
when it has no trained head for the task: transformers would silently initialise that head at random
and every number measured with it would mean nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from quantsense.errors import QuantsenseError
from quantsense.models.head import ModelHead

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
SHOWN_KEYS = 4
CODE_FILES = ("config.json", "tokenizer_config.json")  # where transformers reads auto_map (custom code) from
MIN_VOCAB_SHARE = 0.5  # a tokenizer with fewer tokens than this share of the embedding rows is not the model's


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise QuantsenseError(
                f"--device {name} was asked for but no CUDA GPU is available; use --device cpu or auto"
            )
        return torch.device(name)
    raise QuantsenseError(f"unknown device {name!r}; use auto, cpu or cuda")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: str
    head: ModelHead
    device: torch.device
    dtype: str = "float32"  # the parameters' dtype: float32, bfloat16 or float16

    @property
    def id2label(self) -> dict[int, str]:
        mapping = getattr(self.model.config, "id2label", None) or {}
        return {int(k): v for k, v in mapping.items()}


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or source.endswith(".gguf")


def _source_kwargs(gguf_file: str | None, local_only: bool) -> dict:
    """from_pretrained's keyword arguments: never run a model's own code, never ask on the terminal."""
    kwargs = {"trust_remote_code": False}
    if local_only:
        kwargs["local_files_only"] = True
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    return kwargs


def _config_dtype(load_from: str, kwargs: dict) -> torch.dtype:
    """The dtype the model's config.json declares (``dtype``/``torch_dtype``); float32 if none or unknown."""
    import transformers

    declared = getattr(transformers.AutoConfig.from_pretrained(load_from, **kwargs), "dtype", None)
    name = str(declared).removeprefix("torch.") if declared is not None else "float32"
    return DTYPES.get(name, torch.float32)


def _choose_dtype(dtype: str, device: torch.device, load_from: str, kwargs: dict) -> torch.dtype:
    """``auto``: float32 on CPU and for GGUF (dequantized weights), the config's own dtype on CUDA."""
    if dtype != "auto":
        return DTYPES[dtype]
    if device.type != "cuda" or "gguf_file" in kwargs:
        return torch.float32
    return _config_dtype(load_from, kwargs)


def _head_check(model: torch.nn.Module, missing: list[str], source: str, head: ModelHead, hint: str) -> None:
    """Refuse a model for which transformers had to initialise weights at random (a head it lacks, or an incomplete file)."""
    if not missing:
        return
    shown = ", ".join(sorted(missing)[:SHOWN_KEYS]) + (
        f" and {len(missing) - SHOWN_KEYS} more" if len(missing) > SHOWN_KEYS else ""
    )
    prefix = f"{model.base_model_prefix}."
    if any(not key.startswith(prefix) for key in missing):
        raise QuantsenseError(
            f"model {source} has no trained {head.description} (these weights would be randomly initialised: {shown}); {hint}"
        )
    raise QuantsenseError(
        f"model {source} is incomplete (these weights are missing from its files and would be randomly initialised: {shown}); "
        "re-save the model or pass a complete checkpoint"
    )


@contextlib.contextmanager
def _gguf_read_once(active: bool):
    """While transformers loads a GGUF model (``active``): the file parsed once, not once each for the config, the
    tokenizer and the weights (gguf-py's reader parses every vocabulary string: seconds per read), and gguf-py's
    tensor-name map built once, not once per module of the model (about 0.1 s each). Both are only read; both are
    dropped when the load ends, so no mapping of the file outlives it."""
    if not active:
        yield
        return
    import functools

    import gguf

    readers, name_map, reader_class = {}, gguf.get_tensor_name_map, gguf.GGUFReader

    def reader(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = reader_class(path, *args, **kwargs)
        return readers[key]

    gguf.get_tensor_name_map = functools.lru_cache(maxsize=4)(name_map)
    gguf.GGUFReader = reader  # transformers imports both from the gguf package inside its loading functions
    try:
        yield
    finally:
        gguf.get_tensor_name_map, gguf.GGUFReader = name_map, reader_class
        readers.clear()


def _load_weights(load_from: str, head: ModelHead, dtype: torch.dtype, kwargs: dict):
    """The model with its loading report; never unpickles (safetensors only), GGUF dequantized to float32 then cast."""
    if "gguf_file" in kwargs:
        model, info = head.auto().from_pretrained(load_from, dtype=torch.float32, output_loading_info=True, **kwargs)
        return model.to(dtype), info
    return head.auto().from_pretrained(load_from, dtype=dtype, use_safetensors=True, output_loading_info=True, **kwargs)


def _streamed(stream: str, load_from: str, head: ModelHead, dtype, device, kwargs: dict, source: str, hint: str):
    """(model, loading report) with its blocks streamed from its files (:mod:`quantsense.models.streaming`) when
    ``stream`` asks for it (``auto``: when the weights would not fit comfortably in memory), else None."""
    import transformers

    from quantsense.models import streaming

    if stream == "off":
        return None
    config = transformers.AutoConfig.from_pretrained(load_from, **kwargs)
    if not streaming.should_stream(stream, config, dtype):
        return None
    folder = Path(load_from)
    if "gguf_file" in kwargs:

        def source_of(model):
            return streaming.GGUFSource(folder / kwargs["gguf_file"], model)
    elif folder.is_dir():

        def source_of(model):
            return streaming.SafetensorsSource(folder)
    else:
        raise QuantsenseError(
            f"--stream-blocks on reads a model's files where they lie: download {source} and pass its local folder"
        )

    def on_missing(model, missing):
        _head_check(model, missing, source, head, hint)

    return streaming.build_streamed(head, config, dtype, device, source_of, on_missing), {"missing_keys": []}


def _check_gguf_head(source: str, head: ModelHead, hint: str) -> None:
    """GGUF files hold language models: transformers maps no other head from them."""
    if not head.from_gguf:
        raise QuantsenseError(f"model {source} is a GGUF language model with no trained {head.description}; {hint}")


def _check_weight_files(path: Path, source: str) -> None:
    """A model directory must hold safetensors weights; pickled ones are refused before anything reads them."""
    if any(path.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise QuantsenseError(
            f"model directory {source} holds only pickled weights ({', '.join(pickles)}); quantsense loads only safetensors "
            "(pickle files can execute code): in a trusted environment load it and save_pretrained(DIR, safe_serialization=True)"
        )
    raise QuantsenseError(
        f"model directory {source} has no model.safetensors; point --model at a saved Hugging Face model"
    )


def _check_no_custom_code(path: Path, source: str) -> None:
    """Refuse a folder whose config asks transformers to import Python files from it (``auto_map``)."""
    for name in CODE_FILES:
        try:
            config = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # absent or unreadable: the loader reports it
        auto_map = config.get("auto_map") if isinstance(config, dict) else None
        if auto_map:
            classes = ", ".join(sorted(auto_map)) if isinstance(auto_map, dict) else str(auto_map)
            raise QuantsenseError(
                f"model directory {source} asks to run its own Python code (auto_map in {name}: {classes}); quantsense never "
                f"runs code from a model folder: {_native_hint(config, name)}"
            )


def _native_hint(config: dict, name: str) -> str:
    """What to do about auto_map: transformers may implement the architecture itself."""
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if name == "config.json" and isinstance(model_type, str) and model_type in CONFIG_MAPPING:
        return f"its model_type {model_type!r} is built into transformers, so remove auto_map from {name} to load it with that code"
    return f"use a model whose architecture transformers implements, without auto_map in {name}"


def _custom_code_error(source: str) -> QuantsenseError:
    return QuantsenseError(
        f"model {source} needs its own Python code (auto_map, trust_remote_code); quantsense never runs code from a model: "
        "use a model whose architecture transformers implements"
    )


def _file_reason(exc: Exception) -> str:
    """The loader's reason in one line, said in terms of the files where transformers' own words do not."""
    text = str(exc).strip().splitlines()[0].rstrip(".") if str(exc).strip() else type(exc).__name__
    if isinstance(exc, SafetensorError):
        return f"its .safetensors weights are truncated or not safetensors ({text})"
    if "ignore_mismatched_sizes" in text:  # transformers logs the shapes and raises this generic line
        return "its weights do not have the shapes its config.json describes"
    return text


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


def _hub_error(source: str, exc: Exception) -> QuantsenseError:
    if "trust_remote_code" in str(exc):
        return _custom_code_error(source)
    if "safetensors" in str(exc):
        return QuantsenseError(
            f"hub model {source!r} has no safetensors weights; quantsense loads only safetensors (pickle files can execute "
            "code): pick a model with model.safetensors, or convert it in a trusted environment with save_pretrained"
        )
    return QuantsenseError(
        f"could not load {source!r} from the Hugging Face hub (offline or unknown id); "
        "download it and pass the local directory with --model PATH"
    )


def _locate(source: str, head: ModelHead, hint: str) -> tuple[str, dict, bool]:
    """Where to load from, the from_pretrained keyword arguments, and whether it is a local path."""
    path = Path(os.path.expanduser(source))
    if path.is_file() and path.suffix == ".gguf":
        _check_gguf_head(source, head, hint)
        return str(path.parent), _source_kwargs(path.name, True), True
    if path.is_dir():
        has_config = (path / "config.json").is_file()
        ggufs = [] if has_config else sorted(path.glob("*.gguf"))
        if not has_config and not ggufs:
            raise QuantsenseError(
                f"model directory {source} has no config.json; point --model at a saved Hugging Face model"
            )
        if ggufs:
            _check_gguf_head(source, head, hint)
        else:
            _check_no_custom_code(path, source)
            _check_weight_files(path, source)
        return str(path), _source_kwargs(ggufs[0].name if ggufs else None, True), True
    if _looks_like_path(source):
        raise QuantsenseError(
            f"model path {source} does not exist; pass a local model directory or a hub id with --model"
        )
    return (
        source,
        _source_kwargs(None, not _hub_reachable()),
        False,
    )  # offline: a cached copy still loads, nothing retries


@contextlib.contextmanager
def _progress_bars(shown: bool):
    """transformers' loading bars on or off; its GGUF de-quantizing bar is a plain tqdm, switched off by name."""
    if shown:
        yield
        return
    import functools

    import transformers
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from tqdm.auto import tqdm

    was_enabled = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()
    original = getattr(gguf_utils, "tqdm", None)
    gguf_utils.tqdm = functools.partial(tqdm, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = original
        if was_enabled:
            transformers.utils.logging.enable_progress_bar()


LOAD_ERRORS = (
    OSError,
    ValueError,
    RuntimeError,
    KeyError,
    TypeError,
    SafetensorError,
)  # what transformers raises for bad files


def load_model(
    source: str,
    head: ModelHead,
    device: str | torch.device = "auto",
    dtype: str = "auto",
    quiet: bool = False,
    hint: str = "use a model trained for this task",
    stream: str = "off",
) -> LoadedModel:
    """Load ``source`` (hub id, local directory, or ``.gguf`` file) ending in ``head`` (a task's), in eval mode.

    ``dtype`` is float32, bfloat16, float16 or auto (float32 on CPU; on CUDA the dtype the model's
    config declares, float32 if none). A model without trained weights for the task's head is refused.
    ``quiet`` hides transformers' loading bars; ``hint`` says what to do when the model lacks the head.
    ``stream``: ``on`` keeps the blocks' weights in their files until each block runs (:mod:`.streaming`: a model
    larger than memory), ``auto`` does so when the weights would take over half of memory, ``off`` loads them all.
    """
    if not isinstance(head, ModelHead):
        raise QuantsenseError(f"load_model needs a task's ModelHead (e.g. make_task('sst2').model_head), got {head!r}")
    with _progress_bars(not quiet):
        return _load_model(source, head, device, dtype, hint, stream)


def _load_model(
    source: str, head: ModelHead, device: str | torch.device, dtype: str, hint: str, stream: str = "off"
) -> LoadedModel:
    if dtype not in (*DTYPES, "auto"):
        raise QuantsenseError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
    device = device if isinstance(device, torch.device) else resolve_device(device)
    load_from, kwargs, local = _locate(source, head, hint)
    with _gguf_read_once("gguf_file" in kwargs):
        return _load_located(source, head, device, dtype, hint, load_from, kwargs, local, stream)


def _load_located(
    source: str,
    head: ModelHead,
    device: torch.device,
    dtype: str,
    hint: str,
    load_from: str,
    kwargs: dict,
    local: bool,
    stream: str = "off",
) -> LoadedModel:
    import transformers

    try:
        torch_dtype = _choose_dtype(dtype, device, load_from, kwargs)
        streamed = _streamed(stream, load_from, head, torch_dtype, device, kwargs, source, hint)
        model, info = streamed or _load_weights(load_from, head, torch_dtype, kwargs)
    except LOAD_ERRORS as exc:
        if "trust_remote_code" in str(exc):
            raise _custom_code_error(source) from None
        if local:
            raise QuantsenseError(
                f"could not load model from {source}: {_file_reason(exc)}; re-save it with save_pretrained or pass another --model"
            ) from None
        raise _hub_error(source, exc) from None
    _head_check(model, list(info.get("missing_keys", [])), source, head, hint)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(load_from, **kwargs)
    except LOAD_ERRORS as exc:
        if "trust_remote_code" in str(exc):
            raise _custom_code_error(source) from None
        raise QuantsenseError(
            f"could not load the tokenizer of {source}: {_file_reason(exc)}; save the tokenizer with the model (tokenizer.save_pretrained)"
        ) from None
    check_tokenizer(model, tokenizer, source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if streamed is None:
        model.to(device)  # a streamed model's resident part is on the device already, its blocks go there as they run
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        source=source,
        head=head,
        device=device,
        dtype=str(torch_dtype).removeprefix("torch."),
    )


def max_positions(model: torch.nn.Module) -> int | None:
    """The longest input the model has position embeddings (or a trained rotary range) for; None if unknown.

    RoBERTa-style position embeddings with a padding index number positions from ``padding_idx + 1``, so
    ``padding_idx + 1`` of their rows are never an input's position."""
    config = getattr(model, "config", None)
    limit = next(
        (
            getattr(config, a)
            for a in ("max_position_embeddings", "n_positions")
            if isinstance(getattr(config, a, None), int)
        ),
        None,
    )
    for name, module in model.named_modules():
        if (
            name.endswith("position_embeddings")
            and isinstance(module, torch.nn.Embedding)
            and module.padding_idx is not None
        ):
            usable = module.num_embeddings - (module.padding_idx + 1)
            limit = usable if limit is None else min(limit, usable)
    return limit


def check_tokenizer(model: torch.nn.Module, tokenizer, source: str) -> None:
    """Refuse a tokenizer far smaller than the model's vocabulary: transformers builds a few-token one when a
    folder has no tokenizer files, and every text would become unknown tokens."""
    rows = model.get_input_embeddings().weight.shape[0]
    tokens = len(tokenizer)
    if tokens < MIN_VOCAB_SHARE * rows:
        raise QuantsenseError(
            f"the tokenizer of {source} has {tokens} tokens for a model with {rows} token embeddings: its tokenizer files are "
            "missing or belong to another model; save the model's own tokenizer beside it (tokenizer.save_pretrained(DIR))"
        )


def weights_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer (name, dtype, shape, bytes): identifies the exact weights."""
    digest = hashlib.sha256()
    stream = getattr(model, "quantsense_stream", None)  # a streamed block's parameters: read from the file, as it runs
    for name, tensor in sorted(model.state_dict().items()):
        data = (stream.parameter(name) if tensor.is_meta else tensor).detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy() if data.numel() else b"")  # the buffer itself: no copy
    return digest.hexdigest()[:16]
