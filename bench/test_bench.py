"""Tests of the benchmark harness's arithmetic (no processes started): what Little's law
makes of a table's rows. Run by scripts/test (`python3 -m unittest discover -s bench`)."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402


def rep(rps, p50):
    return {"rps": rps, "latency_us": {"p50": p50}}


def row(scenario, c, **targets):
    """`targets`: name → list of (req/s, p50 µs), one pair a repetition."""
    return (scenario, c, {t: [rep(r, p) for r, p in reps] for t, reps in targets.items()})


class LittlesLaw(unittest.TestCase):
    def cells(self, rows):
        """The section's table rows, split into their cells."""
        lines = [l for l in bench.littles_law(rows) if l.startswith("| ") and not l.startswith("| scenario")]
        return [[c.strip() for c in l.strip("|").split("|")] for l in lines]

    def test_the_throughput_the_line_asks_for_predicts_exactly_1_2(self):
        # Mean latency = c / throughput: at c=64, direct 64,000 req/s is 1,000 µs, nginx
        # 32,000 req/s is 2,000 µs (added 1,000). Added 1,200 µs is 2,200 µs, 29,091 req/s.
        need = 64 / 2200e-6
        rows = [row("openai", 64,
                    direct=[(64000, 1000)] * 3,
                    nginx=[(32000, 2000)] * 3,
                    glmgate=[(need, 2200)] * 3)]
        [[scenario, c, wanted, cell]] = self.cells(rows)
        self.assertEqual((scenario, c), ("openai", "64"))
        self.assertEqual(wanted, f"{need / 32000:.2f}×")
        self.assertEqual(cell, f"glmgate {need / 32000:.2f}× → 1.20 / 1.20")

    def test_measured_ratio_is_of_added_p50s_and_can_part_from_the_prediction(self):
        # nginx's median far below its mean (a skewed distribution): same throughput as
        # glmgate, so the prediction is 1.00, but its added p50 is half of glmgate's.
        rows = [row("openai-stream", 64,
                    direct=[(64000, 900), (64000, 1100), (64000, 1000)],
                    nginx=[(32000, 1400), (32000, 1600), (32000, 1500)],
                    glmgate=[(32000, 1900), (32000, 2100), (32000, 2000)])]
        [[_, _, _, cell]] = self.cells(rows)
        self.assertEqual(cell, "glmgate 1.00× → 1.00 / 2.00")

    def test_low_concurrency_and_rows_without_nginx_are_left_out(self):
        rows = [row("openai", 1, direct=[(8000, 120)], nginx=[(6000, 160)], glmgate=[(5000, 200)]),
                row("openai", 64, direct=[(60000, 1000)], glmgate=[(30000, 2000)])]
        self.assertEqual(bench.littles_law(rows), [])

    def test_a_target_missing_from_the_row_is_skipped(self):
        rows = [row("openai", 256,
                    direct=[(60000, 4000)], nginx=[(40000, 6000)],
                    glmgate=[(36000, 7000)], **{"hyper-pc": [(40000, 6100)]})]
        [[_, _, _, cells]] = self.cells(rows)
        self.assertEqual([c.split()[0] for c in cells.split("; ")], ["glmgate", "hyper-pc"])

    def test_no_measured_ratio_when_nginx_added_nothing_at_the_median(self):
        rows = [row("openai", 64,
                    direct=[(64000, 1000)], nginx=[(32000, 1000)], glmgate=[(32000, 1500)])]
        [[_, _, _, cell]] = self.cells(rows)
        self.assertEqual(cell, "glmgate 1.00× → 1.00 / –")


if __name__ == "__main__":
    unittest.main()
