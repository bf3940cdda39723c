"""Tools around a run: compare two runs, export a run's direction and steer files, the demo model's refusal fine-tune
and its recipe choice.

May import every stage.
"""
