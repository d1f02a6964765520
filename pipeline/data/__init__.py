"""Synthetic talking-face data."""
