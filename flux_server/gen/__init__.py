"""Generated from proto/flux.proto by `python -m flux_server.protogen`; do not edit."""
