from flux_cli.main import cli

cli()
