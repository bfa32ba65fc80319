"""Filters, scorers and pickers: one small plugin per module."""
