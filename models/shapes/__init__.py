"""Shapes world: the procedural dataset the tiny native model is trained and evaluated on."""
