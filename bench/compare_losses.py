"""Compare the per-step training losses of two run directories (metrics.jsonl); one JSON line."""

import json
import sys


def losses(workdir: str) -> dict[int, float]:
    with open(f"{workdir}/logs/metrics.jsonl") as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


if __name__ == "__main__":
    try:
        a, b = losses(sys.argv[1]), losses(sys.argv[2])
        print(json.dumps({"what": "loss_trajectories", "a": sys.argv[1], "b": sys.argv[2],
                          "same_steps": sorted(a) == sorted(b), "steps": len(a),
                          "max_abs_diff": max(abs(a[s] - b[s]) for s in a),
                          "first": a[min(a)], "last": a[max(a)]}))
    except Exception as e:  # noqa: BLE001 - report, the device call goes on
        print(json.dumps({"what": "loss_trajectories_fail", "error": repr(e)[:300]}))
