"""Metrics, benchmark protocols and reports of the paper."""
