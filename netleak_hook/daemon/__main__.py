"""`python -m netleak_hook.daemon`: what netleak and netleak-exec start."""
import sys

from .loop import main

sys.exit(main())
