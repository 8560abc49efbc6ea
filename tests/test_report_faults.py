"""The report over damaged run folders (issue 21): a summary.json it cannot use is skipped with
one warning line naming it; the good runs are still reported."""
import json

import pytest

from helper.report import load_runs, main
from test_report import _write


def test_truncated_summary_is_skipped_with_one_warning(tmp_path, capsys):
    _write(tmp_path, "good", best=74.0, last=73.0)
    _write(tmp_path, "cut", best=75.0, last=74.0, trial="1")
    cut = tmp_path / "cut" / "summary.json"
    cut.write_text(cut.read_text()[:40])  # an interrupted copy
    main([str(tmp_path)])
    out, err = capsys.readouterr()
    [line] = err.splitlines()
    assert line.startswith(f"warning: skipped {cut}: not valid JSON (") and line.endswith("; truncated?)")
    rows = out.splitlines()[2:]
    assert len(rows) == 1 and "| 1 | 74.00 ± 0.00 | 73.00 ± 0.00 |" in rows[0]


@pytest.mark.parametrize("text,why", [
    ("", "not valid JSON"),
    ("[1, 2]", "holds no JSON object"),
    (json.dumps({"args": {}, "dataset": "cifar100"}), "lacks model_name, distill, best_acc, last_acc"),
    (json.dumps({"args": [], "dataset": "c", "model_name": "m", "distill": "kd", "best_acc": 1,
                 "last_acc": 1}), "its args are not a JSON object"),
])
def test_unusable_summaries_are_named(tmp_path, text, why):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text(text)
    (tmp_path / "bytes").mkdir()
    (tmp_path / "bytes" / "summary.json").write_bytes(b"\xff\xfe{")
    warnings = []
    assert load_runs([tmp_path], warnings.append) == []
    assert warnings[0].startswith(f"warning: skipped {tmp_path / 'bytes' / 'summary.json'}: "
                                  f"cannot be read (UnicodeDecodeError")
    assert warnings[1].startswith(f"warning: skipped {tmp_path / 'run' / 'summary.json'}: {why}")
    assert len(warnings) == 2


def test_only_unusable_summaries_is_an_error(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text('{"args": {')
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith(f"warning: skipped {tmp_path / 'run' / 'summary.json'}")
    assert "no readable summary.json" in err and "1 skipped" in err
