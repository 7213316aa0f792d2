"""The admin's side of a running master: what ``furl-master`` asks of it.

Everything here reaches the master over the wire only, through the admin
FURL (``private/admin.furl``), and imports nothing of the master's side.
One small object per operation holds that operation's state.
"""
