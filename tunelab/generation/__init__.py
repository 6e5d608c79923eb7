"""Offline generation: term lists (names of concepts in many languages) generated once, stored, matched live."""
