"""gmpo.perf: the fused AdamW choice gives the reference update; the phase timer's accounting."""
import time

import pytest
import torch

from gmpo.perf import PhaseTimer, adamw_options


def test_adamw_options_fused_on_cpu_matches_reference_update():
    assert adamw_options([torch.zeros(2, requires_grad=True)]) == {"fused": True}
    g = torch.Generator().manual_seed(0)
    init = [torch.randn(7, 5, generator=g), torch.randn(5, generator=g)]
    grads = [[torch.randn(t.shape, generator=g) for t in init] for _ in range(3)]
    results = []
    for kw in ({}, adamw_options(init)):
        ps = [torch.nn.Parameter(t.clone()) for t in init]
        opt = torch.optim.AdamW(ps, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1, **kw)
        for step in grads:
            for p, gr in zip(ps, step):
                p.grad = gr.clone()
            opt.step()
        results.append([p.detach() for p in ps])
    assert (results[0][0] - init[0]).abs().min() > 1e-3  # every weight moved (3 steps of lr 1e-2)
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)


def test_adamw_options_falls_back_for_unsupported_params():
    assert adamw_options([]) == {}
    assert adamw_options([torch.zeros(2, dtype=torch.long)]) == {}


def test_phase_timer_accumulates_and_reports_the_rest():
    t = PhaseTimer("cpu")
    with t("a"):
        time.sleep(0.02)
    with t("a"):
        time.sleep(0.02)
    with t("b"):
        pass
    assert t.totals["a"] == pytest.approx(0.04, abs=0.03) and t.totals["a"] >= 0.04
    assert t.totals["b"] < 0.01
    assert t.other(1.0) == pytest.approx(1.0 - t.totals["a"] - t.totals["b"])
    assert t.other(0.0) == 0.0
    with pytest.raises(ValueError):
        with t("c"):
            raise ValueError("boom")
    assert "c" in t.totals  # a failing phase is still counted
    t.reset()
    assert dict(t.totals) == {}
