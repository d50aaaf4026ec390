"""Scoring crops: the weighted terms, aesthetic heads, knowledge, saliency."""
