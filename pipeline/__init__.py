"""Transfer-learning pipeline stages (``python -m pipeline.<stage>``) and their shared modules."""
import os
import sys

# Set before any stage imports TensorFlow: hides its C++ INFO and WARNING lines once its
# logging is set up, keeping errors. What it writes before that, pipeline.quiet filters.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

if sys.argv[:1] == ["-m"]:  # `python -m pipeline.<name>`: this runs before the module is found
    from pipeline import quiet

    quiet.install()
