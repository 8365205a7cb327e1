"""Conversational visual-inspection assistant."""
__version__ = "0.1.0"
