"""Reconstruction benchmark (the paper's Table 2 protocol) on real RealEstate10K clips.

    python benchmarks/bench_reconstruct.py --re10k ../shared/data/re10k
Same options as ``flowctrl bench reconstruct``; prints per-frame and mean PSNR/SSIM(/LPIPS).
"""
import sys

from flowctrl.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "reconstruct", *sys.argv[1:]]))
