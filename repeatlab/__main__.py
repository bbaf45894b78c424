import sys

from repeatlab.cli import main

sys.exit(main())
