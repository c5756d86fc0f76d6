# The fleetops components image: every pipeline step runs this package with its pinned dependencies.
# `fleetops compile --image <this image>` names it in every executor of the compiled specs.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=3

WORKDIR /opt/fleetops
# Dependencies first, so a code change does not reinstall TensorFlow.
COPY setup.py ./
RUN mkdir -p fleetops components pipelines fleetops_cli \
    && touch fleetops/__init__.py components/__init__.py pipelines/__init__.py fleetops_cli/__init__.py \
    && pip install . \
    && pip uninstall -y fleetops
COPY fleetops ./fleetops
COPY components ./components
COPY pipelines ./pipelines
COPY fleetops_cli ./fleetops_cli
# The same image is the serving container (`fleetops serve-container`): it must load every kind of model,
# Keras (TensorFlow), LiteRT flatbuffers and boosted trees (xgboost, whose wheel carries its OpenMP runtime).
RUN pip install --no-deps . \
    && python -c "import fleetops.training_steps, components.image, fleetops.serving.predictor, ai_edge_litert, xgboost"

# The image names itself: a Vertex tuning job's trials run the trainer in the image the train step runs in
# (fleetops.tuning.vertex.trainer_image). Cloud Build passes the URI it pushes.
ARG FLEETOPS_IMAGE=""
ENV FLEETOPS_IMAGE=${FLEETOPS_IMAGE}

# KFP runs the component's own command; this default serves `fleetops --help`.
ENTRYPOINT ["fleetops"]
CMD ["--help"]
