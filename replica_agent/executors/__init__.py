"""Executors run a StepPlan: a calibrated GPU cost model, a torch model with paged attention, vLLM."""
