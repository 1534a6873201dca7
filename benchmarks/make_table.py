#!/usr/bin/env python
"""Build the speed tables of the README from benchmarks/results/*.json.

    python benchmarks/make_table.py            # rewrite the README block between the markers
    python benchmarks/make_table.py --check    # exit 1 if the README block is out of date

The first table sets the issue-8 targets (H100, GLIP-T(C), 800x1333) beside the official figures
and the best glip_d2 result measured on a GPU for each; a target without a GPU result says "not
yet measured". The second lists every result file.
"""
import argparse
import glob
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BEGIN, END = "<!-- benchmarks:begin -->", "<!-- benchmarks:end -->"

# Official GLIP-T(C) on one H100 (random weights, 800x1333), as reported in issue 8.
OFFICIAL = {
    "b1_coco": "136.2 ms fp32 / 126.1 ms fp16",
    "throughput": "7.3 img/s (1 / 136.2 ms)",
    "lvis": "2.98 s (31 chunks x 96.1 ms)",
    "train": "386 ms/iter AMP = 5.2 img/s, 12.3 GB (537 ms fp32, 15.0 GB)",
}
TARGETS = [  # (key, measure, target, picks the best matching result)
    ("b1_coco", "inference, batch 1, COCO-80", "<= 25 ms",
     lambda r: r["kind"] == "inference" and r["batch"] == 1 and r["vocab"] == "coco", "ms_per_image"),
    ("throughput", "inference throughput, batched, COCO-80", ">= 100 img/s",
     lambda r: r["kind"] == "inference" and r["vocab"] == "coco", "images_per_s"),
    ("lvis", "LVIS-1203 vocabulary, per image", "<= 300 ms",
     lambda r: r["kind"] == "inference" and r["vocab"] == "lvis", "ms_per_image"),
    ("train", "training, batch 2", ">= 10.4 img/s at <= 12.3 GB",
     lambda r: r["kind"] == "training" and r["batch"] == 2, "images_per_s"),
]
FULL_SIZE = [800, 1333]


def load_results(results_dir):
    out = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        with open(path) as f:
            r = json.load(f)
        # Only speed results carry a "kind"; other files (cpu_ratios.json, the data-efficiency
        # table, a list of runs) are reported in the text.
        if isinstance(r, dict) and r.get("kind") in ("inference", "training"):
            r["_file"] = os.path.basename(path)
            out.append(r)
    return out


def _settings(r):
    if r["kind"] == "training":
        return f"{'AMP' if r['amp'] else 'fp32'}, {r['attention']} attention"
    parts = [r["dtype"], f"{r['attention']} attention"]
    if r.get("inference_batch", 1) > 1:
        parts.append(f"{r['inference_batch']} pairs/pass")
    if r.get("compile"):
        parts.append(f"compile {r['compile']}")
    return ", ".join(parts)


def _where(r):
    return r.get("gpu") or f"CPU ({r.get('threads')} threads)"


def _value(r, metric):
    if metric == "images_per_s":
        text = f"{r['images_per_s']:.1f} img/s"
    else:
        text = f"{r['ms_per_image']:.1f} ms" if r["ms_per_image"] < 1000 else f"{r['ms_per_image'] / 1000:.2f} s"
    if r["kind"] == "training":
        text += f", {r['ms_median']:.0f} ms/iter, {r['peak_memory_gb']:.1f} GB"
    return text


def target_table(results):
    rows = ["| measure (H100, GLIP-T(C), 800x1333) | official | target | glip_d2 | settings |",
            "|---|---|---|---|---|"]
    gpu = [r for r in results if r.get("gpu") and r["size"] == FULL_SIZE and "glip_swin_t" in r["config"]]
    for key, measure, target, match, metric in TARGETS:
        cands = [r for r in gpu if match(r)]
        if cands:
            best = (max if metric == "images_per_s" else min)(cands, key=lambda r: r[metric])
            rows.append(f"| {measure} | {OFFICIAL[key]} | {target} | {_value(best, metric)} on {best['gpu']} "
                        f"| {_settings(best)} (`{best['_file']}`) |")
        else:
            rows.append(f"| {measure} | {OFFICIAL[key]} | {target} | not yet measured (no GPU run) | |")
    return rows


def all_results_table(results):
    rows = ["| result file | device | config, size | batch | settings | ms (median) | img/s | TFLOP/s (est.) | peak memory |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        tflops = f"{r['tflops_per_s']:.2f}" if "tflops_per_s" in r else "-"
        plural = "s" if r.get("chunks") != 1 else ""
        extra = f", {r['vocab']} ({r.get('chunks')} prompt{plural})" if r["kind"] == "inference" else ", train step"
        rows.append(
            f"| `{r['_file']}` | {_where(r)} | {os.path.basename(r['config'])} {r['size'][0]}x{r['size'][1]}{extra} "
            f"| {r['batch']} | {_settings(r)} | {r['ms_median']:.1f} | {r['images_per_s']:.2f} | {tflops} "
            f"| {r['peak_memory_gb']:.2f} GB |"
        )
    return rows


def build_block(results_dir):
    results = load_results(results_dir)
    lines = [BEGIN, "", *target_table(results), "", *all_results_table(results), "", END]
    return "\n".join(lines)


def update_readme(readme, results_dir, check=False):
    with open(readme) as f:
        text = f.read()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme} has no {BEGIN} ... {END} block.")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = head + build_block(results_dir) + tail
    if check:
        return new == text
    with open(readme, "w") as f:
        f.write(new)
    return True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readme", default=os.path.join(HERE, "..", "README.md"))
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    ok = update_readme(args.readme, args.results, check=args.check)
    if args.check and not ok:
        print("README speed tables are out of date: run python benchmarks/make_table.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
