"""`python -m flux_server`: the same as `flux-server`."""

from flux_server.cli import server_command

server_command(prog_name="flux-server")
