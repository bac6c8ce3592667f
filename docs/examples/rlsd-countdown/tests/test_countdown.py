import json
import subprocess
import sys

from rlsd_core import Category, get_plugin_manager
from rlsd_core.testing import verifier_conformance
from rlsd_countdown import score_one

# rlsd's conformance battery, one test per property (columns, hostile completions, time budget...)
test_conformance = verifier_conformance(
    "countdown", good=[("<answer>2 * 3 + 4</answer>", {"numbers": [2, 3, 4], "target": 10})],
    bad=[("I give up", {"numbers": [2, 3], "target": 10}),
         ("<answer>__import__('os').getcwd()</answer>", {"numbers": [1], "target": 1})])


def test_right_expression_scores_one():
    v = score_one("Let me try. <answer>(25 - 5) * 3</answer>", [25, 5, 3, 7], 60)
    assert (v.reward, v.category) == (1.0, Category.OK)


def test_wrong_value_and_reused_tile_fail():
    assert score_one("<answer>25 + 5</answer>", [25, 5], 31).message == "expected 31, got 30"
    reused = score_one("<answer>5 * 5</answer>", [5, 2], 25)
    assert reused.category == Category.WRONG_ANSWER and "not available" in reused.message


def test_code_is_not_executed():
    v = score_one("<answer>__import__('os').getcwd()</answer>", [1], 1)
    assert v.category == Category.PARSE_ERROR


def test_entry_point_is_discovered():
    rows = get_plugin_manager().registry.rows()
    mine = [r for r in rows if r["name"] == "countdown"]
    assert mine and mine[0]["distribution"] == "rlsd-countdown"


def test_scores_through_rlsd_verify(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in [
        {"completion": "<answer>2 * 3 + 4</answer>", "numbers": [2, 3, 4], "target": 10},
        {"completion": "I give up", "numbers": [2, 3], "target": 10},
    ]) + "\n")
    out = tmp_path / "out.jsonl"
    subprocess.run([sys.executable, "-m", "rlsd_core.cli", "verify", "--verifier", "countdown",
                    str(src), "-o", str(out)], check=True)
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["reward"] for r in got] == [1.0, 0.0]
    assert got[1]["category"] == "parse_error"
