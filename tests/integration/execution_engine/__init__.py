"""ExecutionEngine against moto server over HTTP, with the real sops binary."""
