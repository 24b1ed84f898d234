"""Past one machine (issue #15): `python -m bench.scale PART [options]`.

Each part is a module of its own with a `main(argv)`; `python -m bench.scale PART --help` lists
its options.

- `store`: `bench/scale_store.py`, 500 chains through one process on SQLite versus two
  processes sharing PostgreSQL (250 each): wall time ratio, chains per second, and the store's
  time per chain on PostgreSQL.
- `router`: `bench/scale_router.py`, chains through the real vllm-router in front of two fake
  replicas: how often a chain's request changed replica, how chains spread.
"""

from __future__ import annotations

import importlib
import sys

PARTS = {
    "router": "bench.scale_router",
    "store": "bench.scale_store",
}


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in PARTS:
        sys.exit(f"usage: python -m bench.scale {{{'|'.join(PARTS)}}} [options]")
    importlib.import_module(PARTS[args[0]]).main(args[1:])


if __name__ == "__main__":
    main()
