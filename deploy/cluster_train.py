"""Start `relaxrl train` on a `ray up` cluster's head node (the script for `ray submit`).

    ray submit deploy/ray-cluster.yaml deploy/cluster_train.py --tmux -- --config configs/cluster.toml

`ray submit` copies this file to ~ on the head and runs it there; it changes into the
checkout the cluster YAML mounts (~/relaxrl, so configs/ paths resolve), joins the running
cluster (--address auto) and passes every other argument to `relaxrl train` unchanged.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

CHECKOUT = Path(os.environ.get("RELAXRL_CHECKOUT", "~/relaxrl")).expanduser()


def main(argv: list[str]) -> int:
    if not (CHECKOUT / "pyproject.toml").exists():
        print(f"cluster_train: no relaxrl checkout at {CHECKOUT} (file_mounts of the cluster YAML; "
              "set RELAXRL_CHECKOUT to override)", file=sys.stderr)
        return 2
    os.chdir(CHECKOUT)
    args = ["train", *argv]
    if "--address" not in argv:
        args[1:1] = ["--address", "auto"]
    if "--no-progress" not in argv:
        args.append("--no-progress")  # tmux/screen logs, not a live display
    from relaxrl.cli import main as relaxrl_main  # after the checkout check: no checkout is one line, not an ImportError

    return relaxrl_main(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
