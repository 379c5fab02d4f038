"""The runtime every service shares: bus, driver, clock, logs, settings, signing."""
