"""One module per `livia` subcommand, each with `configure(parser)` and `run(args) -> int`."""
