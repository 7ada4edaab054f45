"""`python -m remax ...` is the `remax` command; launchers need it as a module:

    accelerate launch --config_file configs/accelerate/ddp.yaml -m remax train --config run.yaml
"""

import sys

from remax.cli import main

if __name__ == "__main__":
    sys.exit(main())
