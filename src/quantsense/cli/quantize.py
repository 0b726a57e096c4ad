"""``quantsense quantize MODEL OUT.gguf --size-of Q4_K_M``: the one command from a model to the shipped GGUF file
(:mod:`quantsense.backends.llama_cpp.quantize`)."""

from __future__ import annotations

import os


def add_parser(sub, parser_class) -> None:
    from quantsense.backends.llama_cpp.quantize import CANDIDATES

    p = sub.add_parser(
        "quantize",
        help="write a llama.cpp GGUF file of a given size: imatrix, reduced sweep, allocation, "
        "file, held-out score in llama.cpp and the llama-quantize recipe",
        allow_abbrev=False,
    )
    p.add_argument("model", metavar="MODEL", help="local model directory or .gguf file (a hub id with internet)")
    p.add_argument(
        "out",
        metavar="OUT.gguf",
        help="the file to write (its .imatrix.gguf, .plan.json, .tensor-types.txt "
        "and .quantsense.json are written beside it)",
    )
    size = p.add_mutually_exclusive_group(required=True)
    size.add_argument("--size", help="largest file size, e.g. 105MB or 100MiB")
    size.add_argument(
        "--size-of",
        metavar="PRESET",
        help="the size of this llama.cpp preset's file (Q3_K_M, Q4_K_M...), which is written and scored beside",
    )
    p.add_argument(
        "--data",
        default=os.environ.get("QUANTSENSE_DATA"),
        required=not os.environ.get("QUANTSENSE_DATA"),
        help="a plain-text file (e.g. wiki.test.raw): the imatrix, selection and held-out scoring use disjoint "
        "token ranges of it, in that order",
    )
    cal = p.add_mutually_exclusive_group()
    cal.add_argument("--imatrix", help="an importance matrix file (GGUF) to use instead of collecting one")
    cal.add_argument(
        "--calibration-data", help="collect the importance matrix on this text instead of --data's first tokens"
    )
    p.add_argument(
        "--candidates", nargs="+", default=list(CANDIDATES), help="formats to choose from (default: %(default)s)"
    )
    p.add_argument(
        "--plan-from-gguf",
        action="append",
        default=[],
        metavar="FILE",
        help="also measure this GGUF file's type assignment (e.g. llama-quantize --target-size's); the better "
        "measured plan within the size is written (repeatable)",
    )
    for name, default, what in (
        ("calibration-tokens", 8192, "tokens the imatrix is collected on"),
        ("choose-tokens", 4096, "tokens the plan is chosen on"),
        ("score-tokens", 4096, "held-out tokens llama.cpp scores the file on"),
        ("context", 1024, "window length in tokens"),
    ):
        p.add_argument(f"--{name}", type=int, default=default, help=f"{what} (default: %(default)s)")
    p.add_argument(
        "--weights-only",
        action="store_true",
        help="measure plans with the weights' error alone, not llama.cpp's rounding of activations too",
    )
    p.add_argument(
        "--estimate",
        choices=("fisher", "weight-error"),
        default="fisher",
        help="how the pairs the sweep does not measure are estimated: fisher (one forward and backward pass "
        "predicts every pair's KL; a few units are measured) or weight-error (every unit measured once, "
        "its other formats scaled by their weight errors) (default: %(default)s)",
    )
    p.add_argument("--no-score", action="store_true", help="skip the held-out score in llama.cpp")
    p.add_argument("--store", default=os.environ.get("QUANTSENSE_STORE"), help="results store (resumable sweep)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")


def run(args) -> int:
    from quantsense.backends.llama_cpp.quantize import quantize

    for flag in ("calibration_tokens", "choose_tokens", "score_tokens", "context"):
        if getattr(args, flag) < 1:
            from quantsense.errors import QuantsenseError

            raise QuantsenseError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    report = quantize(
        args.model,
        args.out,
        args.data,
        size=args.size,
        size_of=args.size_of,
        imatrix=args.imatrix,
        calibration_data=args.calibration_data,
        candidates=args.candidates,
        calibration_tokens=args.calibration_tokens,
        choose_tokens=args.choose_tokens,
        score_tokens=args.score_tokens,
        context=args.context,
        plans_from=args.plan_from_gguf,
        store=args.store,
        quiet=args.quiet,
        score=not args.no_score,
        runtime_activations=not args.weights_only,
        device=args.device,
        estimate=args.estimate,
        say=lambda text: print(text, flush=True),
    )
    print(f"Reproduce it with llama.cpp: {report['recipe']['command']}")
    return 0
