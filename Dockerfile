# Training and inference on GPU hosts: caption-app (the entrypoint), tfrecords-tools, caption-export.
#   docker build -t show-and-tell .
#   docker run --gpus all --user "$(id -u):$(id -g)" -v "$PWD/work:/work" show-and-tell \
#     train --config im2txt --data /work/data --run-dir /work/run
#   docker run --user "$(id -u):$(id -g)" -v "$PWD/work:/work" --entrypoint caption-export show-and-tell \
#     --run-dir /work/run --out /work/exports
# The base image brings TensorFlow (same version as requirements.txt) with CUDA; it is not installed again.
FROM tensorflow/tensorflow:2.21.0-gpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1

# The runtime pins, minus tensorflow itself (the base image's build is the GPU one), minus Beam and the
# LiteRT runtime (optional extras: the image converts and exports, it runs no LiteRT package) and minus
# the `-r requirements-test.txt` line (pytest and the lint tools stay out of the image).
COPY requirements.txt /tmp/requirements.txt
RUN grep -v -E '^(tensorflow==|apache-beam==|ai-edge-litert==|-r )' /tmp/requirements.txt > /tmp/requirements-image.txt \
    && python -m pip install --no-cache-dir -r /tmp/requirements-image.txt \
    && python -c "import tensorflow as tf; assert tf.__version__ == '2.21.0', tf.__version__" \
    && rm /tmp/requirements.txt /tmp/requirements-image.txt

WORKDIR /opt/show-and-tell
COPY pyproject.toml README.md ./
COPY caption_app ./caption_app
COPY tfrecords_tools ./tfrecords_tools
COPY export ./export
# A non-root user with a fixed numeric id. Its home (and the Keras cache below) is readable by
# every user, so `docker run --user "$(id -u):$(id -g)"` (files in bind-mounted dirs owned by you)
# still finds the baked-in weights.
RUN python -m pip install --no-cache-dir --no-deps . \
    && useradd --create-home --no-log-init --uid 10001 --shell /bin/bash captioner \
    && chmod 755 /home/captioner
USER 10001
WORKDIR /home/captioner

# GPU hosts often have no internet: fetch the ImageNet weights of every backbone that has them into
# this user's Keras cache now, through the same code path training uses (backbones.build_backbone).
ENV KERAS_HOME=/home/captioner/.keras
RUN python -c "from caption_app.model import backbones as b; \
[b.build_backbone(n, 'imagenet', s.image_size) for n, s in b.BACKBONES.items() if s.imagenet_url]" \
    && chmod -R a+rX "$KERAS_HOME" && ls -l "$KERAS_HOME/models"

ENTRYPOINT ["caption-app"]
CMD ["--help"]
