"""Phase 2: quantize each block alone and rank the blocks. (same flags as `quantsense sensitivity`)."""

from experiments import run

if __name__ == "__main__":
    run("sensitivity")
