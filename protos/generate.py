"""Regenerate the Python modules of every ``protos/*.proto``: ``python -m protos.generate``.

The output goes next to the .proto files (or into ``--out``); a test regenerates into a temporary
directory and fails when the committed modules are stale.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
REPO_ROOT = PROTO_DIR.parent


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Write ``<name>_pb2.py``, ``<name>_pb2.pyi`` and ``<name>_pb2_grpc.py`` under ``out_dir/protos``."""
    import grpc_tools
    from grpc_tools import protoc  # dev-only dependency: the generated modules are committed

    include = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for proto in proto_files():
        relative = proto.relative_to(REPO_ROOT).as_posix()
        args = [
            "grpc_tools.protoc",
            f"-I{REPO_ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            relative,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed on {relative}")
        stem = out_dir / "protos" / proto.stem
        written += [Path(f"{stem}_pb2.py"), Path(f"{stem}_pb2.pyi"), Path(f"{stem}_pb2_grpc.py")]
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="root of the output tree")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
