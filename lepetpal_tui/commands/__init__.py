"""One module per `lepetpal` subcommand (see lepetpal_tui.cli)."""
