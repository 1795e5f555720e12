"""Print one comparison table of finished runs: quality and bytes per batch."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hvams.train.report import human  # noqa: E402


def row(run: Path) -> str:
    m = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()][-1]
    s = json.loads((run / "summary.json").read_text())
    per = sum(s["bytes_per_step"].values())
    img = sum(v for k, v in s["bytes_per_step"].items() if k.startswith("image"))

    def f(x):
        return "   -  " if x is None or x != x else f"{x:.4f}"
    return (f"{run.name:<16}{f(m['auc']):>8}{f(m['gauc']):>8}{f(m.get('new_ad_auc')):>8}"
            f"{f(m.get('oracle_auc')):>8}{human(per):>12}{human(img):>12}{s['samples_per_s']:>10.0f}")


head = f"{'run':<16}{'AUC':>8}{'GAUC':>8}{'newAUC':>8}{'oracle':>8}{'bytes/batch':>12}{'image B/b':>12}{'samples/s':>10}"
print(head)
print("-" * len(head))
for arg in sys.argv[1:]:
    print(row(Path(arg)))
