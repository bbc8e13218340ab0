"""Fingerprint daemon: one ZFM/R30x-family scanner on a serial port."""
