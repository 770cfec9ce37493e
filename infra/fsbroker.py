"""The embedded broker (no Redis configured): kombu's filesystem transport, with each message written whole before
a consumer can see it.

kombu's own `_put` creates the message file under its final name and then writes it. The consumer lists the folder
and moves every file that ends in `.<queue>.msg` away to read it, without waiting for the writer (the writer's lock
is advisory, and a rename ignores it): a message caught half written reads as empty or cut JSON, and the worker's
consumer dies on the decode error, so `make run` stopped within a minute or two of a newcomer's demo. Here the
message is written under a name the consumer skips, then renamed into place (one atomic rename on a filesystem).
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

PARTIAL = ".part"  # a name the consumer skips: it reads only `<...>.<queue>.msg`


class Channel(filesystem.Channel):
    """kombu's filesystem channel whose messages appear only once complete."""

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]  # as kombu's own
        """Put `payload` onto `queue`: written under a partial name, then renamed into place."""
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"  # kombu's naming: it sorts by it
        final = os.path.join(self.data_folder_out, name)
        partial = final + PARTIAL
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            try:
                os.unlink(partial)
            except OSError:
                pass
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    """kombu's filesystem transport with `Channel` above (settings: CELERY_BROKER_TRANSPORT)."""

    Channel = Channel
