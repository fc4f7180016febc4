"""What a user asks for, made once for the CLI and the widgets alike (no Qt).

``classes``: the task and class count a set of masks implies; ``train_request``: the
``TrainConfig`` for a user's request; ``model_spec``: which model a spec names; ``batch`` and
``batch_file``: many files predicted, with ``resume``'s completion records; ``export`` and
``bioimage_io_export``: TorchScript/ONNX and bioimage.io packages; ``demo`` (with ``overview``'s
pictures); ``annotation``: the helpers behind the Annotate widget.
"""
