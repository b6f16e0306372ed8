import sys

from notbugs.cli import main

sys.exit(main())
