"""relaxrl: reinforcement-learning agents that relax atomic structures."""

__version__ = "0.1.0"
