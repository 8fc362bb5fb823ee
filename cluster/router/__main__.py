import sys

from cluster.router.command import main

sys.exit(main())
