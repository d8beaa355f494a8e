"""`python -m netleak_hook.daemon`: what netleak and netleak-exec start."""
import sys

from .service import main

sys.exit(main())
