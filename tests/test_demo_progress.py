"""make demo prints each run's epochs while it trains, not only at the end."""

import sys

from spksep_modules import demo


def test_training_runs_print_their_epochs_as_they_come(tmp_path, monkeypatch, capsys):
    # A stand-in for train.py: three epoch lines, a moment apart, then a test summary.
    script = (
        "import json, os, sys, time\n"
        "out = sys.argv[1]\n"
        "for epoch in (1, 2, 3):\n"
        "    with open(os.path.join(out, 'train_log.txt'), 'a') as f:\n"
        "        f.write(f'epoch: {epoch}, steps: {25 * epoch}, lr: 2.00e-03 - train loss: -1.0 '\n"
        "                f'- valid loss: -1.5, valid si_snr: {epoch}.50\\n')\n"
        "    time.sleep(0.3)\n"
        "json.dump({}, open(os.path.join(out, 'test_summary.json'), 'w'))\n")
    monkeypatch.setattr(demo, "command", lambda name, data, out, extra, seed:
                        [sys.executable, "-c", script, out])
    monkeypatch.setattr(demo, "PROGRESS_SECONDS", 0.05)
    demo.train("convtasnet", str(tmp_path / "data"), str(tmp_path / "runs"))
    lines = [line for line in capsys.readouterr().out.splitlines()
             if line.startswith("[demo] convtasnet: epoch")]
    assert [line.split(" (")[0] for line in lines] == [
        f"[demo] convtasnet: epoch {e}, steps: {25 * e}, valid si_snr: {e}.50" for e in (1, 2, 3)]
    assert all(line.endswith(" min)") for line in lines)
