"""Transfer learning with Keras as a DVC pipeline, in three kinds of module:

  pipeline/stages/   the DVC stages, run by dvc.yaml: ``python -m pipeline <stage>``
  pipeline/lib/      what they share: params, sources, images, shards, models, training, ...
  pipeline/*.py      commands for people: ``python -m pipeline predict``, ``check``, ``lr_find``

Importing it does nothing else: the entry point, pipeline/__main__.py, sets up logging and
the stderr filter for the stage or command it runs.
"""
