"""Metadata agent: the instance metadata service at 100.100.100.200 for one simulated host."""
