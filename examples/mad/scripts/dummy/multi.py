"""Writes several results to the CSV named by MAD_OUTPUT_CSV (models.json: multiple_results)."""

import csv
import os

rows = [
    {"model": "resnet50", "performance": "812.4", "metric": "images_per_second", "batch": "64"},
    {"model": "bert_large", "performance": "95.1", "metric": "sequences_per_second", "batch": "8"},
]
path = os.environ.get("MAD_OUTPUT_CSV", "perf_dummy_multi.csv")
with open(path, "w", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
print(f"wrote {len(rows)} results to {path}")
