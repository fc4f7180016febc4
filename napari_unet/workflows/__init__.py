"""The user-level decisions the CLI and the widgets share, each made once and without Qt.

``layout``: what an array is (image, channels, colour, stack, volume); ``classes``: the task
and class count a set of masks implies; ``train_request``: the ``TrainConfig`` for what a user
asked for; ``model_spec``: which model a spec names; ``auto_prompts``: automatic mask prompts.
"""
