"""Files people send Livia (images, audio, documents) and images she draws.

`refs` turns a channel's files into references kept with the message (no bytes in the
store); `FileWork` reads them at answer time, each upstream call through the manager.
"""

from livia.files.kinds import ACCEPTED, classify, too_large, too_many, unsupported
from livia.files.refs import http_refs, slack_refs
from livia.files.spool import Spool
from livia.files.work import FileFailed, FileWork, Prepared, slack_token_may_go

__all__ = [
    "ACCEPTED",
    "FileFailed",
    "FileWork",
    "Prepared",
    "Spool",
    "classify",
    "http_refs",
    "slack_refs",
    "slack_token_may_go",
    "too_large",
    "too_many",
    "unsupported",
]
