"""The detector's pyfunc for MLflow's "models from code": MLflow runs this file when it loads the model."""

from mlflow.models import set_model

from trainables.mlflow_model import DetectorModel

set_model(DetectorModel())
