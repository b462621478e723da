"""Run the erase service's batch worker as a Ray job on the cluster it is submitted to::

    export RAY_AUTH_MODE=token   # Ray's token auth; see README, "On a cluster"
    ray job submit --address http://HEAD:8265 --working-dir . -- python -m launch.serve_job \\
        --root /shared/eraser-data --workers G --group-size K --address auto \\
        [--replicas R] [--http 0.0.0.0:8080] [--drain] [serve options]

Each batch runs on the distributed engine (worker groups on a ZeRO-3-partitioned base); with
``--replicas`` every adapter gets R serving replicas that receive each new version as a
delta. The data root must be shared storage that the driver and every node see.
"""

import sys

from eraser_dist.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
