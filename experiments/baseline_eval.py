"""Phase 1: FP32 baseline accuracy. (same flags as `quantsense baseline`)."""

from experiments import run

if __name__ == "__main__":
    run("baseline")
