"""One module per `gmpo` verb: add_arguments(parser) and run(args) -> int."""
