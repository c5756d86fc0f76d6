"""The image every fleetops component runs in, and the decorator that says so.

Components are lightweight Python components whose code runs inside our image
(the Dockerfile installs the package), so Vertex runs exactly what the tests
ran. `fleetops compile --image URI` rewrites the image of every executor.
"""

import functools

from kfp import dsl

DEFAULT_IMAGE = "us-docker.pkg.dev/my-project/fleetops/components:latest"

fleetops_component = functools.partial(dsl.component, base_image=DEFAULT_IMAGE, install_kfp_package=False)
