"""Flat profile from py-spy's raw (collapsed) stacks: self and total share per function.

Usage: python benchmarks/flat_profile.py STACKS.txt [TOP]
"""
import sys
from collections import Counter


def main(path: str, top: int = 40) -> None:
    own, total, samples = Counter(), Counter(), 0
    for line in open(path):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    print(f"{'self %':>7} {'total %':>8}  function (file:line)   [{samples} samples]")
    for f, n in own.most_common(top):
        print(f"{100 * n / samples:7.1f} {100 * total[f] / samples:8.1f}  {f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40)
