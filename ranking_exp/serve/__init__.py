"""HTTP serving of an exported ranker: ``python -m ranking_exp.serve model=PATH_OR_MLFLOW_URI``.

One module per concern: ``config`` (the Hydra structured config), ``model`` (load, warm-up,
metadata), ``schema`` (request validation derived from the model's FeatureSpec, to dense NumPy
arrays), ``batcher`` (an asyncio micro-batcher in front of the ``serving_features`` signature),
``app`` (the FastAPI routes and the body-size limit), ``__main__`` (the command). Importing this
package does not import TensorFlow.
"""
