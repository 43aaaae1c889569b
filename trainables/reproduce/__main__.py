"""``python -m trainables.reproduce``: see trainables/reproduce/train.py."""

import sys

from trainables.reproduce.train import main

sys.exit(main())
