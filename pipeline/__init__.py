"""Transfer-learning pipeline stages (``python -m pipeline.<stage>``) and their shared modules."""
import os

# Set before any stage imports TensorFlow: hides its C++ start-up INFO chatter
# (oneDNN notes, CPU feature lists), keeping warnings and errors.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
