"""``edgeflow plot``: a PNG of one key's raw readings, trend, window summaries and anomalies."""
