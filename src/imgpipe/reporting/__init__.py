"""The comparison report and its figures."""
