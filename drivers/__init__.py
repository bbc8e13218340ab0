"""Device daemons: each owns one device and knows nothing of enrollments."""
