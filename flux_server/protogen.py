"""Regenerates `flux_server/gen/` from `proto/flux.proto` with grpcio-tools.

The generated modules are checked in (so installing Flux needs no protoc); a test runs this into
a temporary directory and compares, so the checked-in copy can never fall behind the proto.
Run `python -m flux_server.protogen` after editing the proto.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_SOURCE = REPO_ROOT / "proto" / "flux.proto"
GEN_DIR = Path(__file__).resolve().parent / "gen"
GENERATED_FILES = ("flux_pb2.py", "flux_pb2.pyi", "flux_pb2_grpc.py")


def generate(out_dir: Path, proto: Path = PROTO_SOURCE) -> list[Path]:
    """Writes the generated modules into `out_dir` and returns their paths.

    The proto is compiled as `flux_server/gen/flux.proto` so that the generated gRPC module
    imports its messages as `flux_server.gen.flux_pb2`, which works from an installed package.
    """
    from grpc_tools import protoc

    with tempfile.TemporaryDirectory() as include_root:
        staged = Path(include_root) / "flux_server" / "gen" / "flux.proto"
        staged.parent.mkdir(parents=True)
        shutil.copyfile(proto, staged)
        with tempfile.TemporaryDirectory() as raw_out:
            args = ["grpc_tools.protoc", f"-I{include_root}", f"--python_out={raw_out}",
                    f"--pyi_out={raw_out}", f"--grpc_python_out={raw_out}", str(staged)]
            if protoc.main(args) != 0:
                raise RuntimeError(f"protoc failed on {proto}")
            out_dir.mkdir(parents=True, exist_ok=True)
            written = []
            for name in GENERATED_FILES:
                target = out_dir / name
                shutil.copyfile(Path(raw_out) / "flux_server" / "gen" / name, target)
                written.append(target)
    return written


def main() -> None:
    generate(GEN_DIR)
    print(f"regenerated {', '.join(GENERATED_FILES)} in {GEN_DIR}", file=sys.stderr)


if __name__ == "__main__":
    main()
