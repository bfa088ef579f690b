import sys

from .predict import main

sys.exit(main())
