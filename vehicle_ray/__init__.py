"""vehicle_ray: the fastai emergency-vehicle recipe as a distributed batch system on Ray."""

import warnings

# fastai still decorates a few helpers with torch.jit.script; torch 2.14 warns on every import, in
# every Ray worker. It is noise for our users, not something they can act on.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)

__version__ = "0.1.0"
