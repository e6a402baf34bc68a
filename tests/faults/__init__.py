"""End-to-end fault tests: `shardproxy serve` in subprocesses, real databases, real clients."""
