"""Phase 3: mixed-precision strategies derived from the block ranking. (same flags as `quantsense mixed`)."""

from experiments import run

if __name__ == "__main__":
    run("mixed")
