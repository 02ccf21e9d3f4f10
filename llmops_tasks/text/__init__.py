"""Text as every step sees it: record cells to text, the one normalized form of a prompt, keys,
the column-wise kernels validate and eda measure with, and PII detection."""
