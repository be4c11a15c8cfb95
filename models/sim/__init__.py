"""The simulated accelerator (``family: sim``): a benchmarking instrument, never a default.

``model.py`` is the model behind the stage interface; ``cost.py`` its cost and memory model,
calibrated on published Wan 2.1 figures."""
