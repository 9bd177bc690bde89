"""Model definitions, one family per module."""
