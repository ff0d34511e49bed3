"""Camera accuracy benchmark (oracle vs generated RotErr/TransErr/CamMC, failure rate).

    python benchmarks/bench_camera.py --suite basic difficult re10k --re10k ../shared/data/re10k
Same options as ``flowctrl bench camera``; prints the table and writes JSON/Markdown/PNG.
"""
import sys

from flowctrl.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "camera", *sys.argv[1:]]))
