"""One lock for torch.fx tracing and for the model runs that may overlap it.

While it traces, torch.fx's tracer replaces ``nn.Module.__call__`` and ``__getattr__`` for the
whole process, so a model run in another thread at that moment is recorded into the trace (or
fails) instead of running. Found under load: concurrent submissions of zoo archs in the API's
threads made an MLP "not run on its input shape". Tracing, and every model run the API process
does (shape propagation, the meta-device checks of an arch, the inspect proof), hold this lock;
a job's process runs one job and traces only before it runs it.
"""

from __future__ import annotations

import threading

GRAPH_LOCK = threading.RLock()
