"""Placeholder: being written in this session (registers nothing yet)."""
