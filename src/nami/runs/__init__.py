"""What a run is, below both training and inference: its config (:mod:`~nami.runs.config`, the typed
``TrainConfig``), its task (:mod:`~nami.runs.tasks`, the torch-free registry of tasks) and reading its
directory back (:mod:`~nami.runs.load`). :mod:`nami.training` writes runs; :mod:`nami.pipelines`
answers with them without importing the training code.
"""
