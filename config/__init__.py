"""Packaged default configuration: one YAML file and one JSON Schema per daemon."""
