"""What the stages and commands share: params, data sources, images, shards, models, training,
distribution, inference, plots, atomic outputs and log filtering. Nothing here is run directly,
except ``python -m pipeline.lib.params`` (the docs' params table) and ``pipeline.lib.sources``
(scripts/get-data.sh)."""
