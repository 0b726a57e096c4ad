"""Export target ``gguf``: a plan as a GGUF file llama.cpp runs, checked in fresh processes in two runtimes.

:func:`write` writes every planned weight in its GGUF format. The source is the model's own
GGUF file, or, for a Hugging Face model (a directory, a hub id or an in-memory model), the model
converted with :mod:`quantsense.backends.llama_cpp.gguf_convert` to a temporary GGUF in its own dtype.
Weights the plan leaves alone keep the source's bytes, which is exactly what the simulation
measured (it ran them at the source's de-quantized values). Then :func:`verify` (called by the language-model
task with its token ids and windows):

(a) transformers' GGUF loader (it de-quantizes) computes the per-token log-probs of the same token
    ids and windows: the largest difference from the simulation is reported (expected <= 1e-4);
(b) llama.cpp (``llama-cpp-python``) computes the perplexity on the same token ids (expected within
    2 % of the simulation: llama.cpp quantizes activations to 8 bits in its dot products) and its
    prompt-processing and generation speed are measured side by side with an F16 GGUF of the same model (the
    source itself when it is already F16 or BF16).
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from quantsense.errors import QuantsenseError
from quantsense.exporters.base import Exporter, ExportSource, check_plan_formats, register_exporter, run_fresh
from quantsense.quantization.plan import Plan
from quantsense.models.streaming import AUTO_SHARE, memory_bytes

ARCHITECTURES = ("llama",)  # GGUF architectures whose tensor names the export maps (SmolLM2, Llama, ...)
_OUTTYPES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}  # convert_hf_to_gguf.py --outtype per dtype


def _architecture(source: ExportSource) -> str:
    import gguf

    file = source.gguf_file
    if file is None:
        from quantsense.backends.llama_cpp.gguf_convert import check_convertible

        check_convertible(source.model, source.tokenizer)
        return "llama"
    field = gguf.GGUFReader(file).get_field("general.architecture")
    arch = bytes(field.parts[-1]).decode()
    if arch not in ARCHITECTURES:
        raise QuantsenseError(f"GGUF export maps tensor names for {', '.join(ARCHITECTURES)} models; {file} is {arch}")
    return arch


@contextmanager
def gguf_source(source: ExportSource, workdir: Path):
    """The GGUF file to quantize from: the model's own, or the model converted into ``workdir`` (deleted on exit)."""
    file = source.gguf_file
    if file is not None:
        yield file
        return
    from quantsense.backends.llama_cpp.gguf_convert import convert_hf_to_gguf

    with tempfile.TemporaryDirectory(prefix=".quantsense-convert-", dir=workdir) as tmp:
        yield convert_hf_to_gguf(source.model, source.tokenizer, Path(tmp) / "source.gguf", name=Path(source.name).name)


def gguf_tensor_types(source: ExportSource, plan: Plan) -> dict[str, str]:
    """GGUF tensor name -> type for every planned unit; formats GGUF cannot store are refused by their entry."""
    from quantsense.backends.llama_cpp.gguf_file import hf_to_gguf_name

    check_plan_formats(plan, "gguf")
    arch = _architecture(source)
    return {hf_to_gguf_name(name, source.units.num_blocks, arch): fmt.name for name, fmt in plan.assignments}


def gguf_tensor_importance(source: ExportSource, plan: Plan) -> tuple[dict, dict | None]:
    """(GGUF tensor name -> imatrix weights, for every planned tensor quantized with one; the imatrix provenance
    llama-quantize writes, or None). A plan may bind one imatrix only, as one llama-quantize run does."""
    from quantsense.backends.llama_cpp.gguf_file import hf_to_gguf_name

    arch = _architecture(source)
    weights = {
        hf_to_gguf_name(name, source.units.num_blocks, arch): fmt.importance(name) for name, fmt in plan.assignments
    }
    used = {fmt.calibration() for _, fmt in plan.assignments} - {None}
    if len(used) > 1:
        raise QuantsenseError(f"the plan uses {len(used)} different importance matrices; a GGUF file records one")
    return {k: v for k, v in weights.items() if v is not None}, (next(iter(used)).provenance() if used else None)


def check_plan(source: ExportSource, plan: Plan) -> None:
    """Everything checkable before writing: a mapped architecture (or a convertible tokenizer), GGUF formats only."""
    gguf_tensor_types(source, plan)


def _converted_type(source: ExportSource) -> str:
    """The GGUF type a Hugging Face model's matrices are converted to (``--outtype``): its dtype's, or for a model
    streamed from bf16 files, bf16 (the same values, half the bytes of float32)."""
    from quantsense.backends.llama_cpp.gguf_convert import converted_dtype

    return _OUTTYPES[str(converted_dtype(source.model)).removeprefix("torch.")]


def llama_quantize_command(source: ExportSource, plan: Plan) -> str:
    """The command line that reproduces ``plan`` with llama-quantize (base type: the plan's commonest; ``--pure`` so
    that llama.cpp's preset rules leave every planned tensor at its planned type; ``--imatrix`` with the plan's).

    From a Hugging Face model it starts with llama.cpp's converter, in the model's own dtype.
    """
    from quantsense.backends.llama_cpp.gguf_file import llama_quantize_args

    types = gguf_tensor_types(source, plan)
    base = Counter(types.values()).most_common(1)[0][0] if types else "q8_0"
    overrides = {name: t for name, t in types.items() if t != base}
    file = source.gguf_file
    convert = []
    if file is None:
        outtype = _converted_type(source)
        file = Path(f"{Path(source.name).name}-{outtype}.gguf")
        convert = ["python", "convert_hf_to_gguf.py", source.name, "--outtype", outtype, "--outfile", str(file), "&&"]
    _, provenance = gguf_tensor_importance(source, plan)
    imatrix = ["--imatrix", provenance["file"]] if provenance else []
    args = [
        *convert,
        "llama-quantize",
        "--allow-requantize",
        "--pure",
        *imatrix,
        *llama_quantize_args(overrides),
        str(file),
        f"{file.stem}-quantsense.gguf",
        base,
    ]
    return " ".join(args)


def _verifier(*args: str) -> dict:
    """``gguf_check.py`` in a fresh interpreter (transformers' GGUF loader, or llama.cpp)."""
    from quantsense.backends.llama_cpp import gguf_check

    return run_fresh(gguf_check, list(args), what="the GGUF check")


def llama_cpp_available() -> bool:
    """Whether llama-cpp-python is installed; one that is installed but does not load is refused in one line (checked
    before an export starts: see :func:`check_llama_cpp`)."""
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def check_llama_cpp() -> None:
    """Refuse, before any work, a llama-cpp-python that is installed but does not import (a broken build)."""
    if not llama_cpp_available():
        return
    try:
        import llama_cpp  # noqa: F401
    except Exception as exc:  # its own RuntimeError when libllama does not load, or an OSError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise QuantsenseError(
            f"llama-cpp-python is installed but does not load ({type(exc).__name__}: {first}); reinstall "
            'it (CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --force-reinstall --no-cache-dir '
            "llama-cpp-python) or export with --no-verify"
        ) from None


def write(source: ExportSource, plan: Plan, out: str | Path, check=None) -> dict:
    """Write ``plan`` as a GGUF file at ``out``; ``check(path, source_file)`` (the task's, e.g. :func:`verify`) runs
    while the source GGUF still exists and adds its figures. Returns the report."""
    out = Path(out)
    types = gguf_tensor_types(source, plan)
    if out.exists():
        raise QuantsenseError(f"--out {out} already exists; choose another file name or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with gguf_source(source, out.parent) as source_file:
        report = _write(source, plan, types, source_file, out)
        if check is not None:
            checked = check(out, source_file)
            report["lines"] += checked.pop("lines", [])
            report.update(checked)
    return report


def _write(src: ExportSource, plan: Plan, types: dict[str, str], source: Path, out: Path) -> dict:
    from quantsense.backends.llama_cpp.gguf_file import predicted_gguf_bytes, write_gguf
    from quantsense.quantization.size import average_bits

    importance, provenance = gguf_tensor_importance(src, plan)
    predicted = predicted_gguf_bytes(source, types, default_type=None, provenance=provenance)
    written = write_gguf(source, types, out, default_type=None, importance=importance, provenance=provenance)
    converted = src.gguf_file is None
    report = {
        "out": str(out),
        "format": "gguf",
        "plan_avg_bits": average_bits(src.units, plan),
        "file_bytes": written["bytes"],
        "predicted_file_bytes": predicted["file_bytes"],
        "source_file_bytes": source.stat().st_size,
        "source_converted": converted,
        "tensor_types": written["types"],
        "llama_quantize": llama_quantize_command(src, plan),
    }
    report["size_error"] = report["file_bytes"] / report["predicted_file_bytes"] - 1
    what = f"converted to a {_converted_type(src).upper()} GGUF" if converted else "GGUF"
    report["lines"] = [
        f"file {report['file_bytes'] / 1e6:.2f} MB, predicted {report['predicted_file_bytes'] / 1e6:.2f} MB "
        f"({100 * report['size_error']:+.3f} %); source ({what}) {report['source_file_bytes'] / 1e6:.2f} MB; "
        "tensor types " + ", ".join(f"{t} x{n}" for t, n in sorted(report["tensor_types"].items()))
    ]
    return report


def verify(
    path: Path,
    source: Path,
    token_ids: list[int],
    context: int,
    stride: int,
    simulated_logprob,
    speed_repeats: int = 3,
    simulated_kl=None,
) -> dict:
    """The written file against the simulation (per-token log-probs of ``token_ids`` in windows of ``context`` every
    ``stride`` tokens) in transformers and llama.cpp; in llama.cpp also its KL against an F16 file of ``source`` (or
    ``source`` itself when it is F16 or BF16: :func:`_reference`) on those tokens (beside the simulation's KL against
    FP32) and its speed against that file."""
    report = _verify(
        path, source, token_ids, context, stride, np.asarray(simulated_logprob, dtype=np.float64), speed_repeats
    )
    if simulated_kl is not None:
        report["simulated_kl_mean"] = float(np.mean(simulated_kl))
    report["lines"] = _verify_lines({**report, "file_bytes": Path(path).stat().st_size})
    return report


def _verify(
    path: Path, source: Path, token_ids: list[int], context: int, stride: int, sim_lp, speed_repeats: int
) -> dict:
    from quantsense.evaluation.metrics import perplexity
    from quantsense.backends.llama_cpp.llama_score import score_in_llama_cpp

    out = {"simulated_perplexity": perplexity(sim_lp)}
    with tempfile.TemporaryDirectory() as tmp:
        ids = Path(tmp) / "ids.json"
        ids.write_text(json.dumps(token_ids))
        window = [str(ids), str(context), str(stride)]
        float_bytes = _float32_bytes(path)
        if float_bytes > AUTO_SHARE * memory_bytes():  # transformers de-quantizes the whole file to float32
            out["transformers"] = (
                f"not reloaded: de-quantized to float32 the model takes {float_bytes / 1e9:.1f} GB, over half of this "
                f"machine's {memory_bytes() / 1e9:.1f} GB (transformers' GGUF loader holds it whole)"
            )
        else:
            hf = _verifier("--runtime", "transformers", str(path.resolve()), *window)
            out["transformers_perplexity"] = hf["perplexity"]
            out["max_token_logprob_difference"] = float(np.abs(np.asarray(hf["token_logprob"]) - sim_lp).max())
            out["quantsense_imported_by_check"] = hf["quantsense_imported"]
        if not llama_cpp_available():
            out["llama_cpp"] = "not installed: pip install -c constraints.txt -e '.[llama]' to run the llama.cpp check"
            return out
        cpp = _verifier("--runtime", "llama.cpp", str(path.resolve()), *window)
        out["llama_cpp_perplexity"] = cpp["perplexity"]
        out["llama_cpp_over_simulated"] = cpp["perplexity"] / out["simulated_perplexity"]
        f16, out["reference_type"] = _reference(source, Path(tmp))
        scored = score_in_llama_cpp(path, f16, token_ids, context, stride)
        out.update({f"llama_cpp_{k}": v for k, v in scored.items() if k.startswith(("kl_", "top1"))})
        if f16.stat().st_size > AUTO_SHARE * memory_bytes():
            out["speed"] = (
                f"not measured: the {out['reference_type']} file ({f16.stat().st_size / 1e9:.1f} GB) would not stay in "
                f"this machine's {memory_bytes() / 1e9:.1f} GB of memory, so its speed would be the disk's"
            )
        else:
            out.update(_speed_against_f16(f16, path, speed_repeats))
    return out


def _reference(source: Path, tmp: Path) -> tuple[Path, str]:
    """(the unquantized file llama.cpp scores the export against, its type): a source whose matrices are all F16 or
    BF16 itself (a BF16 model's own values; no 16 GB copy for an 8B model), else an F16 copy of it written in ``tmp``."""
    from quantsense.backends.llama_cpp.gguf_file import _layout, write_gguf

    types = {kind for _, shape, kind in _layout(source).tensors if len(shape) >= 2}
    if len(types) == 1 and types <= {"f16", "bf16"}:
        return source, types.pop().upper()
    f16 = tmp / "f16.gguf"
    write_gguf(source, {}, f16, default_type="f16")
    return f16, "F16"


def _float32_bytes(path: Path) -> int:
    """What the GGUF file's tensors take de-quantized to float32."""
    from quantsense.backends.llama_cpp.gguf_file import _read

    return 4 * sum(int(t.n_elements) for t in _read(path).tensors)


def _speed_against_f16(f16: Path, path: Path, repeats: int) -> dict:
    """llama.cpp tokens/s of the export and of an F16 GGUF of the same model, measured alternately."""
    runs = {"plan": [], "f16": []}
    for _ in range(repeats):  # alternate so both see the same machine load; keep each one's best
        for name, file in (("plan", path), ("f16", f16)):
            runs[name].append(_verifier("--speed", str(file.resolve()), "--repeats", "1"))
    best = {
        name: {key: max(r[key] for r in rs) for key in ("prompt_tokens_per_s", "gen_tokens_per_s")}
        for name, rs in runs.items()
    }
    return {
        "f16_file_bytes": f16.stat().st_size,
        "threads": runs["plan"][0]["threads"],
        "prompt_tokens_per_s": best["plan"]["prompt_tokens_per_s"],
        "gen_tokens_per_s": best["plan"]["gen_tokens_per_s"],
        "f16_prompt_tokens_per_s": best["f16"]["prompt_tokens_per_s"],
        "f16_gen_tokens_per_s": best["f16"]["gen_tokens_per_s"],
    }


def _reference_words(rep: dict) -> str:
    kind = rep["reference_type"]
    return "an F16 file of the same model" if kind == "F16" else f"the model's own {kind} file"


def _verify_lines(rep: dict) -> list[str]:
    ref = rep.get("reference_type")
    lines = [
        f"transformers' GGUF loader in a fresh process (quantsense imported: {rep['quantsense_imported_by_check']}): "
        f"perplexity {rep['transformers_perplexity']:.4f} vs simulated {rep['simulated_perplexity']:.4f}, largest "
        f"per-token log-prob difference {rep['max_token_logprob_difference']:.2e}"
        if "transformers_perplexity" in rep
        else f"transformers' GGUF loader: {rep['transformers']}"
    ]
    if "llama_cpp_perplexity" not in rep:
        return lines + [f"llama.cpp: {rep['llama_cpp']}"]
    lines.append(
        f"llama.cpp perplexity {rep['llama_cpp_perplexity']:.4f} on the same token ids: "
        f"{100 * (rep['llama_cpp_over_simulated'] - 1):+.2f} % from the simulation (llama.cpp rounds activations to 8 bits)"
    )
    beside = f" (simulation against FP32: {rep['simulated_kl_mean']:.4f})" if "simulated_kl_mean" in rep else ""
    lines.append(
        f"llama.cpp mean KL against {_reference_words(rep)} on those tokens: {rep['llama_cpp_kl_mean']:.4f} "
        f"[95% CI {rep['llama_cpp_kl_ci_low']:.4f}, {rep['llama_cpp_kl_ci_high']:.4f}]{beside}, top-1 agreement "
        f"{rep['llama_cpp_top1_agreement']:.1f} %"
    )
    if "speed" in rep:
        return lines + [f"llama.cpp speed against {rep['reference_type']}: {rep['speed']}"]
    lines.append(
        f"llama.cpp speed ({rep['threads']} threads, best of alternating runs): prompt {rep['prompt_tokens_per_s']:.1f} tok/s "
        f"vs {ref} {rep['f16_prompt_tokens_per_s']:.1f} ({rep['prompt_tokens_per_s'] / rep['f16_prompt_tokens_per_s']:.2f}x), "
        f"generation {rep['gen_tokens_per_s']:.1f} tok/s vs {ref} {rep['f16_gen_tokens_per_s']:.1f} "
        f"({rep['gen_tokens_per_s'] / rep['f16_gen_tokens_per_s']:.2f}x); file {rep['file_bytes'] / 1e6:.1f} MB vs {ref} "
        f"{rep['f16_file_bytes'] / 1e6:.1f} MB"
    )
    return lines


@register_exporter
class GGUFExporter(Exporter):
    """Export target ``gguf`` (:func:`write`, :func:`check_plan`)."""

    name = "gguf"
    single_file = True  # writes one .gguf file (--out FILE.gguf)
    streams = True  # converts and quantizes one tensor at a time (a streamed model's blocks read from their files)
    check_plan = staticmethod(check_plan)
    write = staticmethod(write)
    llama_quantize_command = staticmethod(llama_quantize_command)  # the plan as llama-quantize's own command line
