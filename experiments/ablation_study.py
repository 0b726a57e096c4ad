"""Ablation: only the least sensitive block at INT4, all others FP32. (same flags as `quantsense ablation`)."""

from experiments import run

if __name__ == "__main__":
    run("ablation")
