"""Datasets: prompt sets, preference pairs and TLCR token labels, read from JSON / JSONL / Parquet specs."""
