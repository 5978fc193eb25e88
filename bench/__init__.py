"""creditapp's benchmark suite: run `bench/run --help`."""
