"""Rewrite checkpoints of earlier dbm-ltr versions (format 1-2) in the current format, which
the safe loader reads without --trust-checkpoint.

    python scripts/upgrade_checkpoints.py RUN_DIR [RUN_DIR ...]      # or checkpoint files

Earlier versions kept NumPy's random state as an array, which only the full unpickler builds;
this script loads each file with it, so run it only on checkpoints you made yourself (a
pickle can run code). It keeps everything else of the checkpoint as it is, stores the random
state in plain types, and records the new digest where the run keeps digests.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch

from dbm_ltr.engine.checkpoint import CHECKPOINT, FORMAT_VERSION, atomic_write, load_checkpoint, previous_path
from dbm_ltr.errors import DbmLtrError
from dbm_ltr.serialization import trusting_checkpoints


def plain_rng(rng: dict) -> dict:
    """A format 1-2 random state with NumPy's tuple as capture_rng() stores it now."""
    numpy = rng.get("numpy")
    if isinstance(numpy, tuple):
        name, keys, pos, has_gauss, cached = numpy
        rng = {
            **rng,
            "numpy": {
                "name": str(name),
                "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached),
            },
        }
    return rng


def upgrade(path: Path) -> str:
    with trusting_checkpoints():
        state = load_checkpoint(path)
    if state.get("format_version") == FORMAT_VERSION:
        return "already current"
    for holder in (state, state.get("partial") or {}):
        if isinstance(holder.get("rng"), dict):
            holder["rng"] = plain_rng(holder["rng"])
    state["cls_num_list"] = [int(n) for n in state.get("cls_num_list", [])]
    state["environment"] = {k: (None if v is None else str(v)) for k, v in (state.get("environment") or {}).items()}
    state["format_version"] = FORMAT_VERSION
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    old_digest, new_digest = hashlib.sha256(path.read_bytes()).hexdigest(), hashlib.sha256(data).hexdigest()
    digests = path.parent / "checkpoint.sha256"
    known = json.loads(digests.read_text()) if digests.is_file() else None
    # every write atomic, and both digests on record while the file changes: a kill at any
    # moment leaves a checkpoint the run's record vouches for, old or new
    if known is not None:
        atomic_write(digests, json.dumps({**known, "upgrading": new_digest}).encode())
    atomic_write(path, data)
    if known is not None:  # the run's record of its checkpoints' digests follows
        known = {k: new_digest if v == old_digest else v for k, v in known.items()}
        atomic_write(digests, json.dumps(known).encode())
    load_checkpoint(path)  # the safe loader reads it now
    return f"rewritten (format {FORMAT_VERSION})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", metavar="RUN_DIR|CHECKPOINT")
    args = parser.parse_args(argv)
    failed = 0
    for item in args.paths:
        folder = Path(item)
        paths = [folder / CHECKPOINT, previous_path(folder / CHECKPOINT)] if folder.is_dir() else [folder]
        paths = [p for p in paths if p.is_file() or not folder.is_dir()]
        if not paths:
            print(f"upgrade_checkpoints: no {CHECKPOINT} in {folder}", file=sys.stderr)
            failed += 1
        for path in paths:
            try:
                print(f"{path}: {upgrade(path)}")
            except DbmLtrError as err:
                print(f"upgrade_checkpoints: {err}", file=sys.stderr)
                failed += 1
    return 2 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
