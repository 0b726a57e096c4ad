"""A plan as a GGUF file llama.cpp runs, checked in fresh processes in two runtimes.

:func:`export_gguf` writes every planned weight in its GGUF format. The source is the model's own
GGUF file, or, for a Hugging Face model (a directory, a hub id or an in-memory model), the model
converted with :mod:`quantsense.quantization.gguf_convert` to a temporary GGUF in its own dtype.
Weights the plan leaves alone keep the source's bytes, which is exactly what the simulation
measured (it ran them at the source's de-quantized values). Then, unless ``verify=False``:

(a) transformers' GGUF loader (it de-quantizes) computes the per-token log-probs of the same token
    ids and windows: the largest difference from the simulation is reported (expected <= 1e-4);
(b) llama.cpp (``llama-cpp-python``) computes the perplexity on the same token ids (expected within
    2 % of the simulation: llama.cpp quantizes activations to 8 bits in its dot products) and its
    prompt-processing and generation speed are measured side by side with an F16 GGUF of the same model.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from quantsense.errors import QuantsenseError
from quantsense.quantization.plan import Plan

ARCHITECTURES = ("llama",)  # GGUF architectures whose tensor names the export maps (SmolLM2, Llama, ...)
_OUTTYPES = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}  # convert_hf_to_gguf.py --outtype per model dtype


def _gguf_file(ws) -> Path | None:
    """The model's own GGUF file, or None for a Hugging Face model."""
    path = Path(ws.source)
    return path if path.suffix == ".gguf" and path.is_file() else None


def _architecture(ws) -> str:
    import gguf

    file = _gguf_file(ws)
    if file is None:
        from quantsense.quantization.gguf_convert import check_convertible

        check_convertible(ws.model, ws.tokenizer)
        return "llama"
    field = gguf.GGUFReader(file).get_field("general.architecture")
    arch = bytes(field.parts[-1]).decode()
    if arch not in ARCHITECTURES:
        raise QuantsenseError(f"GGUF export maps tensor names for {', '.join(ARCHITECTURES)} models; {file} is {arch}")
    return arch


@contextmanager
def gguf_source(ws, workdir: Path):
    """The GGUF file to quantize from: the model's own, or the model converted into ``workdir`` (deleted on exit)."""
    file = _gguf_file(ws)
    if file is not None:
        yield file
        return
    from quantsense.quantization.gguf_convert import convert_hf_to_gguf

    with tempfile.TemporaryDirectory(prefix=".quantsense-convert-", dir=workdir) as tmp:
        yield convert_hf_to_gguf(ws.model, ws.tokenizer, Path(tmp) / "source.gguf", name=Path(ws.source).name)


def gguf_tensor_types(ws, plan: Plan) -> dict[str, str]:
    """GGUF tensor name -> type for every planned unit; integer-grid units are refused."""
    from quantsense.quantization.gguf_export import hf_to_gguf_name

    arch = _architecture(ws)
    types = {}
    for name, fmt in plan.assignments:
        if fmt.family != "gguf":
            raise QuantsenseError(f"unit {name} is planned as {fmt.name}, an integer grid; GGUF export takes GGUF formats "
                                  "(q8_0 q5_1 q5_0 q4_1 q4_0 f16 bf16): allocate with --candidates q4_0 ... or use --format torchao")
        types[hf_to_gguf_name(name, ws.units.num_blocks, arch)] = fmt.name
    return types


def llama_quantize_command(ws, plan: Plan) -> str:
    """The command line that reproduces ``plan`` with llama-quantize (base type: the plan's commonest).

    From a Hugging Face model it starts with llama.cpp's converter, in the model's own dtype.
    """
    from quantsense.quantization.gguf_export import llama_quantize_args

    types = gguf_tensor_types(ws, plan)
    base = Counter(types.values()).most_common(1)[0][0] if types else "q8_0"
    overrides = {name: t for name, t in types.items() if t != base}
    file = _gguf_file(ws)
    convert = []
    if file is None:
        outtype = _OUTTYPES[ws.dtype]
        file = Path(f"{Path(ws.source).name}-{outtype}.gguf")
        convert = ["python", "convert_hf_to_gguf.py", ws.source, "--outtype", outtype, "--outfile", str(file), "&&"]
    args = [*convert, "llama-quantize", "--allow-requantize", *llama_quantize_args(overrides), str(file),
            f"{file.stem}-quantsense.gguf", base]
    return " ".join(args)


def token_ids(batches) -> list[int]:
    """The token stream the windows were cut from (every window's tokens at their stream positions)."""
    ids: dict[int, int] = {}
    for batch in batches:
        window = batch.inputs["input_ids"][0].tolist()
        start = int(batch.index[-1]) + 1 - len(window)
        ids.update({start + j: t for j, t in enumerate(window)})
    return [ids[i] for i in range(len(ids))]


def _verifier(*args: str) -> dict:
    """``verify_gguf.py`` in a fresh interpreter (transformers' GGUF loader, or llama.cpp)."""
    from quantsense.quantization import verify_gguf
    from quantsense.quantization.export import run_fresh

    return run_fresh(verify_gguf, list(args), what="the GGUF check")


def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def export_gguf(ws, plan: Plan, out: Path, verify: bool = True, speed_repeats: int = 3) -> dict:
    """Write ``plan`` as a GGUF file at ``out`` and check it; returns the report."""
    out = Path(out)
    types = gguf_tensor_types(ws, plan)
    if out.exists():
        raise QuantsenseError(f"--out {out} already exists; choose another file name or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    with gguf_source(ws, out.parent) as source:
        report = _write(ws, plan, types, source, out)
        if verify:
            report.update(_verify(ws, plan, out, source, speed_repeats))
            report["lines"] += _verify_lines(report)
    return report


def _write(ws, plan: Plan, types: dict[str, str], source: Path, out: Path) -> dict:
    from quantsense.quantization.gguf_export import predicted_gguf_bytes, write_gguf
    from quantsense.quantization.size import average_bits

    predicted = predicted_gguf_bytes(source, types, default_type=None)
    written = write_gguf(source, types, out, default_type=None)
    converted = _gguf_file(ws) is None
    report = {"out": str(out), "format": "gguf", "plan_avg_bits": average_bits(ws.units, plan),
              "file_bytes": written["bytes"], "predicted_file_bytes": predicted["file_bytes"],
              "source_file_bytes": source.stat().st_size, "source_converted": converted, "tensor_types": written["types"],
              "llama_quantize": llama_quantize_command(ws, plan)}
    report["size_error"] = report["file_bytes"] / report["predicted_file_bytes"] - 1
    what = f"converted to a {ws.dtype} GGUF" if converted else "GGUF"
    report["lines"] = [f"file {report['file_bytes'] / 1e6:.2f} MB, predicted {report['predicted_file_bytes'] / 1e6:.2f} MB "
                       f"({100 * report['size_error']:+.3f} %); source ({what}) {report['source_file_bytes'] / 1e6:.2f} MB; "
                       "tensor types " + ", ".join(f"{t} x{n}" for t, n in sorted(report["tensor_types"].items()))]
    return report


def _verify(ws, plan: Plan, path: Path, source: Path, speed_repeats: int) -> dict:
    from quantsense.evaluation.metrics import perplexity

    settings = ws.task.settings()
    simulated = ws.engine.evaluate_many([("export plan", plan)], desc="simulated plan")["export plan"]
    sim_lp = simulated.arrays["token_logprob"].astype(np.float64)
    out = {"simulated_perplexity": perplexity(sim_lp)}
    with tempfile.TemporaryDirectory() as tmp:
        ids = Path(tmp) / "ids.json"
        ids.write_text(json.dumps(token_ids(ws.batches)))
        window = [str(ids), str(settings["context"]), str(settings["stride"])]
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
        out.update(_speed_against_f16(source, path, Path(tmp), speed_repeats))
    return out


def _speed_against_f16(source: Path, path: Path, tmp: Path, repeats: int) -> dict:
    """llama.cpp tokens/s of the export and of an F16 GGUF of the same model, measured alternately."""
    from quantsense.quantization.gguf_export import write_gguf

    f16 = tmp / "f16.gguf"
    write_gguf(source, {}, f16, default_type="f16")
    runs = {"plan": [], "f16": []}
    for _ in range(repeats):  # alternate so both see the same machine load; keep each one's best
        for name, file in (("plan", path), ("f16", f16)):
            runs[name].append(_verifier("--speed", str(file.resolve()), "--repeats", "1"))
    best = {name: {key: max(r[key] for r in rs) for key in ("prompt_tokens_per_s", "gen_tokens_per_s")}
            for name, rs in runs.items()}
    return {"f16_file_bytes": f16.stat().st_size, "threads": runs["plan"][0]["threads"],
            "prompt_tokens_per_s": best["plan"]["prompt_tokens_per_s"], "gen_tokens_per_s": best["plan"]["gen_tokens_per_s"],
            "f16_prompt_tokens_per_s": best["f16"]["prompt_tokens_per_s"], "f16_gen_tokens_per_s": best["f16"]["gen_tokens_per_s"]}


def _verify_lines(rep: dict) -> list[str]:
    lines = [f"transformers' GGUF loader in a fresh process (quantsense imported: {rep['quantsense_imported_by_check']}): "
             f"perplexity {rep['transformers_perplexity']:.4f} vs simulated {rep['simulated_perplexity']:.4f}, largest "
             f"per-token log-prob difference {rep['max_token_logprob_difference']:.2e}"]
    if "llama_cpp_perplexity" not in rep:
        return lines + [f"llama.cpp: {rep['llama_cpp']}"]
    lines.append(f"llama.cpp perplexity {rep['llama_cpp_perplexity']:.4f} on the same token ids: "
                 f"{100 * (rep['llama_cpp_over_simulated'] - 1):+.2f} % from the simulation (llama.cpp rounds activations to 8 bits)")
    lines.append(f"llama.cpp speed ({rep['threads']} threads, best of alternating runs): prompt {rep['prompt_tokens_per_s']:.1f} tok/s "
                 f"vs F16 {rep['f16_prompt_tokens_per_s']:.1f} ({rep['prompt_tokens_per_s'] / rep['f16_prompt_tokens_per_s']:.2f}x), "
                 f"generation {rep['gen_tokens_per_s']:.1f} tok/s vs F16 {rep['f16_gen_tokens_per_s']:.1f} "
                 f"({rep['gen_tokens_per_s'] / rep['f16_gen_tokens_per_s']:.2f}x); file {rep['file_bytes'] / 1e6:.1f} MB vs F16 "
                 f"{rep['f16_file_bytes'] / 1e6:.1f} MB")
    return lines
