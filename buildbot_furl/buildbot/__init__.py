"""Buildbot plugin: FURL workers on a real, unpatched Buildbot master.

In ``master.cfg``::

    import os
    from buildbot_furl.buildbot import furl_protocol, load_workers

    furl_workers = load_workers(os.path.join(basedir, 'workers.furls'))
    c['workers'] = furl_workers          # or one by one: worker.FurlWorker('linux1')
    c['protocols'] = {'furl': furl_protocol(basedir)}   # or {'furl': {'port': 9990}}
    # and name them in builders: workernames=[w.name for w in furl_workers]

The master's directory holds what ``furl-master create-master -d BASEDIR
--location tcp:HOST:PORT`` made there: ``private/tub.pem`` (the key every
FURL's TUBID pins), ``furl-master.conf`` and ``workers.furls``.

* :mod:`.settings` — ``c['protocols']['furl']`` and ``furl_protocol``;
* :mod:`.worker` — ``FurlWorker`` (entry point ``buildbot.worker``) and ``load_workers``;
* :mod:`.hub` — ``FurlHub``, one per master, which serves them.
"""

from buildbot_furl.buildbot.hub import FurlHub
from buildbot_furl.buildbot.settings import furl_protocol, hub_settings
from buildbot_furl.buildbot.worker import FurlWorker, load_workers

__all__ = ["FurlHub", "FurlWorker", "furl_protocol", "hub_settings", "load_workers"]
