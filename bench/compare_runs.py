"""Are two data folders the same experiment? Compares model checksums, constructed shards and scores.

    python bench/compare_runs.py DATA_A DATA_B [--profile cpu]

Used to check that a profile run as capped jobs (bench/capped_jobs.sh) made exactly what one
uninterrupted run made: on the CPU path every model and shard should be bit-identical.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository, for notbugs

from notbugs import results  # noqa: E402
from notbugs import record as R  # noqa: E402
from notbugs import stages as S  # noqa: E402


def models(data: Path) -> dict:
    return {str(path.relative_to(data / "models")): json.loads((path / "meta.json").read_text())["checkpoint_sha256"]
            for path in S.trained_models(data)}


def shards(data: Path) -> dict:
    return {p.parent.name: [s["sha256"] for s in json.loads(p.read_text())["shards"]]
            for p in (data / "datasets").glob("*/manifest.json")}


def scores(data: Path, profile: str) -> dict:
    ev = results.load("evaluations", R.results_root(data))
    ev = ev[ev["profile"] == profile]
    return {(r.model_id, r.attack, float(r.eps), int(r.steps)): float(r.accuracy) for r in ev.itertuples()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--profile", default="cpu")
    args = parser.parse_args()
    same = True
    for what, get in (("models", models), ("constructed sets", shards),
                      ("scores", lambda d: scores(d, args.profile))):
        a, b = get(args.a), get(args.b)
        differ = sorted(str(k) for k in set(a) | set(b) if a.get(k) != b.get(k))
        identical = sum(a.get(k) == v for k, v in b.items())
        print(f"{what}: {len(a)} and {len(b)}, {identical} identical; differing or missing: {differ or 'none'}")
        same &= not differ
    print("same experiment" if same else "NOT the same")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
