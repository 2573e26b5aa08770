"""The checked-in generated code is what grpcio-tools makes of proto/flux.proto today."""

from __future__ import annotations

from pathlib import Path

from flux_server.protogen import GEN_DIR, GENERATED_FILES, PROTO_SOURCE, generate


def test_generated_code_is_current(tmp_path: Path) -> None:
    generate(tmp_path)
    stale = [name for name in GENERATED_FILES
             if (tmp_path / name).read_text() != (GEN_DIR / name).read_text()]
    assert not stale, f"{stale} differ from proto/flux.proto; run python -m flux_server.protogen"


def test_the_check_notices_a_change(tmp_path: Path) -> None:
    edited = tmp_path / "flux.proto"
    edited.write_text(PROTO_SOURCE.read_text().replace("string path = 5;", "string route = 5;"))
    out = tmp_path / "gen"
    generate(out, edited)
    assert (out / "flux_pb2.py").read_text() != (GEN_DIR / "flux_pb2.py").read_text()
