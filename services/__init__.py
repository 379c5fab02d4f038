"""ramsim services: each a pure core inside a thin I/O shell, talking only over the bus."""
