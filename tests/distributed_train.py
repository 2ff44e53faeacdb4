"""`python tests/distributed_train.py ...`: one training process of the distribution tests.

Run as a subprocess by tests/test_distribute.py: logical CPU devices and
TF_CONFIG must be set before TensorFlow initializes, so each configuration
needs a fresh process. Prints the history as the last line (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--cpus", type=int, default=1, help="logical CPU devices (mirrored replicas)")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()

    import tensorflow as tf

    if args.cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.cpus)

    from caption_app.training import distribute
    from caption_app.training.train import train
    from tests.conftest import tiny_config

    config = tiny_config(*args.set)
    devices = [f"/cpu:{i}" for i in range(args.cpus)] if config.train.strategy == "mirrored" else None
    strategy = distribute.make_strategy(config.train.strategy, devices)
    history = train(config, args.data, args.run_dir, verbose=0, strategy=strategy)
    print(json.dumps(history), flush=True)


if __name__ == "__main__":
    main()
