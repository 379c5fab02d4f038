"""Experiments (issue 12): one timeline file, run live or in deterministic simulated time, with a verdict and plots."""
