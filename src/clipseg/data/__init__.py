"""Datasets in their official on-disk formats, prompt engineering and synthetic data."""
