"""Print the last COCO AP / AP50 of each shapes split from a training run's metrics.json."""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1] + "/metrics.json") if "bbox/AP" in line]
last = rows[-1]
for split in ("shapes_val", "shapes_val_novel"):
    print(f"{split:18s} AP {last[split + '/bbox/AP']:.1f}  AP50 {last[split + '/bbox/AP50']:.1f}")
