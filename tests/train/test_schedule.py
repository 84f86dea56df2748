import pytest
import torch

from medk2n.train.schedule import STAGES, curriculum_stage, warmup_cosine


def test_curriculum_order_follows_fractions():
    starts = [0.0, 0.25, 0.5, 0.75]
    seen = [curriculum_stage(s, 100, starts) for s in range(100)]
    assert seen[0] == "1to1" and seen[30] == "kto1" and seen[60] == "1ton" and seen[99] == "kton"
    # stages appear in curriculum order and never go back
    order = [STAGES.index(s) for s in seen]
    assert order == sorted(order)


def test_curriculum_rejects_bad_fractions():
    with pytest.raises(ValueError):
        curriculum_stage(1, 10, [0.5, 0.2, 0.3, 0.4])


def test_warmup_then_cosine():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=10, total_steps=110)
    rates = []
    for _ in range(110):
        rates.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert rates[0] == pytest.approx(0.1)
    assert rates[9] == pytest.approx(1.0)
    assert rates[10] == pytest.approx(1.0)
    assert rates[-1] == pytest.approx(0.05, abs=0.01)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))


def test_budget_progress_drives_the_decay_and_the_stages(monkeypatch):
    from medk2n.train import schedule

    clock = {"now": 50.0}
    monkeypatch.setattr(schedule.time, "monotonic", lambda: clock["now"])
    progress = schedule.BudgetProgress(started=50.0, seconds=100.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=2, total_steps=10**9, progress=progress)
    seen = []
    for step in range(12):
        clock["now"] = 50.0 + 10.0 * step  # step i runs at 10 % of the budget per step
        seen.append(schedule.stage_at(progress(step), [0.0, 0.15, 0.3, 0.45]))
        opt.step()
        sched.step()
    assert seen[0] == "1to1" and seen[2] == "kto1" and seen[4] == "1ton" and seen[5] == "kton"
    assert sched.get_last_lr()[0] == pytest.approx(0.05)  # the budget is spent: the floor
    clock["now"] = 100.0
    assert progress(0) == pytest.approx(0.5)
