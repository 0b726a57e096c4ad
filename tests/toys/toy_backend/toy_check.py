"""The toy runtime's reader, run as a script in a fresh interpreter (numpy only): de-quantize every tensor of a
``toyrt`` file and save them, printing what it read as JSON on its last line."""

import json
import sys

import numpy as np


def main(path: str, out: str) -> None:
    data = np.load(path)
    names = sorted({key.rsplit(".", 1)[0] for key in data.files})
    np.savez(out, **{name: data[f"{name}.codes"].astype(np.float32) * data[f"{name}.scale"] for name in names})
    print(json.dumps({"tensors": len(names), "quantsense_imported": "quantsense" in sys.modules}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
