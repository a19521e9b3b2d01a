"""The progress contract of widen.h (widen_progress_fn), checked over the (done, total) calls a run made:
one fixed total, done never going back and ending at the total, at most 64 MiB between two calls;
after a cancel (the first call returned true), no call at all."""
import numpy as np

MiB = 1 << 20
STEP = 64 * MiB


def check_calls(calls, total=None, cancelled=False, skipped_end=False):
    """total: the run's total, where the test knows it. skipped_end: the run stopped reading early (a
    difference found), and its last report jumps to the total over what it did not read."""
    assert calls, "no progress reported"
    totals = {t for _, t in calls}
    assert len(totals) == 1, f"the total changed during the run: {sorted(totals)}"
    run_total = totals.pop()
    if total is not None:
        assert run_total == total
    done = [d for d, _ in calls]
    assert done == sorted(done), "progress went backwards"
    if cancelled:
        assert len(calls) == 1, f"{len(calls) - 1} progress calls after the cancel"
        assert done[0] <= STEP
        return
    assert done[-1] == run_total, f"progress ended at {done[-1]} of {run_total}"
    gaps = np.diff([0] + done[:-1] if skipped_end else [0] + done)
    assert gaps.max() <= STEP, f"{gaps.max() / MiB:.0f} MiB between two progress calls"
