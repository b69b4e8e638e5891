"""Transfer experiments: frozen features and their cache, linear probes, the scenarios grid and its verdicts."""
