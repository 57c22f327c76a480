"""Fixed histogram bins of the step telemetry (torch-free: the trainer fills them, the dashboard reads them).

``ratio/log_hist`` holds ``len(LOG_RATIO_EDGES) + 1`` = 42 counts of the token log-ratios l_t of a step:
[l <= -1, 40 equal bins (e_i, e_{i+1}] over (-1, 1], l > 1].
"""
LOG_RATIO_EDGES = tuple(round(-1.0 + 0.05 * i, 10) for i in range(41))  # 40 equal bins over [-1, 1] (log space)
LOG_RATIO_KEY = "ratio/log_hist"
