"""The spec's synchronous MVP endpoint, kept only as the benchmark's baseline."""
