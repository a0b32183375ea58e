"""Transfer learning with Keras as a DVC pipeline, in three kinds of module:

  pipeline/stages/   the nine DVC stages, run by dvc.yaml: ``python -m pipeline.stages.<name>``
  pipeline/lib/      what they share: params, sources, images, shards, models, training, ...
  pipeline/*.py      commands for people: ``python -m pipeline.predict``, ``.check``, ``.lr_find``
"""
import os
import sys

# Set before any stage imports TensorFlow: hides its C++ INFO and WARNING lines once its
# logging is set up, keeping errors. What it writes before that, pipeline.lib.quiet filters.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if sys.argv[:1] == ["-m"]:  # `python -m pipeline...`: this runs before the module is found
    from pipeline.lib import quiet

    quiet.install()
