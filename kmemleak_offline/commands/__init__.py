"""One module per subcommand (analyze, diff, info, import; record lives with the recorder), each a
thin Typer function over the modules that do the work; `common` holds the one error class."""
