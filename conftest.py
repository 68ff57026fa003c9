"""pytest runs the smoke profile unless CMEDU_PROFILE is set.

The default keeps a newcomer's first ``pytest`` to minutes: the notebooks run at tiny sizes (nbval's kernels inherit
this environment). ``CMEDU_PROFILE=cpu pytest`` runs every notebook at full size, which takes over an hour on 2 cores.
"""
import os

os.environ.setdefault("CMEDU_PROFILE", "smoke")
