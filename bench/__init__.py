"""Benchmarks: our backends and services against peers, side by side in one run (``make bench``)."""
