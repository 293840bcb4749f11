"""The embedded broker: kombu's filesystem transport with atomic files.

kombu's own transport creates a message file empty and then writes it, and moves a message it
takes to the system temporary folder before reading it. A worker that lists the folder in
between takes an empty or partial file: `loads` raises, the file is already removed, the message
is lost and the worker stops on an "unrecoverable" error (celery/kombu#1551). Exchange tables
have the same window when they are first written.

Here every file is written under a name nobody reads and renamed into place (a rename within one
filesystem is atomic), so a reader sees a whole message or none. A message is taken by renaming
it into a folder beside the queue: of two workers racing for one message exactly one wins, and
a file that still cannot be decoded is moved aside to `rejected/` and logged, never dropped in
silence. `config.celery` registers this transport for `filesystem://`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from time import monotonic

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem, virtual
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

logger = logging.getLogger("gatehouse.broker")

STAGING = ".staging"  # files being written; the leading dot keeps them out of every queue
TAKEN = ".taken"  # messages a worker has claimed and is reading
REJECTED = "rejected"  # files that could not be decoded, kept for an operator


def write_atomically(path: Path, data: bytes, staging: Path) -> None:
    """`path` holds `data` whole or is left as it was; `staging` must be on path's filesystem."""
    staging.mkdir(parents=True, exist_ok=True)
    partial = staging / f"{uuid.uuid4().hex}.part"
    try:
        with open(partial, "wb") as out:
            out.write(data)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


class Channel(filesystem.Channel):
    @property
    def _queue_folder(self) -> Path:
        return Path(self.data_folder_in)

    def _put(self, queue: str, payload: dict, **kwargs: object) -> None:
        name = f"{int(round(monotonic() * 1000))}_{uuid.uuid4()}.{queue}.msg"
        out = Path(self.data_folder_out)
        try:
            write_atomically(out / name, str_to_bytes(dumps(payload)), out / STAGING)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {name!r} to directory") from exc

    def _get(self, queue: str) -> dict:
        wanted = f"{queue}.msg"
        folder = self._queue_folder
        taken = folder / TAKEN
        taken.mkdir(exist_ok=True)
        for name in sorted(os.listdir(folder)):
            if name.partition(".")[2] != wanted:
                continue
            try:
                os.rename(folder / name, taken / name)  # atomic: one taker only
            except OSError:
                continue  # another worker took it first
            try:
                payload = (taken / name).read_bytes()
            except OSError as exc:
                raise ChannelError(f"Cannot read file {name!r} from queue.") from exc
            try:
                message = loads(bytes_to_str(payload))
            except ValueError:
                self._reject(taken / name)
                continue
            (taken / name).unlink(missing_ok=True)
            return message
        raise virtual.Empty()

    def _reject(self, path: Path) -> None:
        rejected = self._queue_folder / REJECTED
        rejected.mkdir(exist_ok=True)
        os.replace(path, rejected / path.name)
        logger.error("broker message %s is not JSON; moved to %s", path.name, rejected)

    # Exchange tables: read-modify-write under a lock file, replaced whole.

    @contextmanager
    def _table_lock(self, exchange: str):  # type: ignore[no-untyped-def]
        self.control_folder.mkdir(parents=True, exist_ok=True)
        lock_path = self._exchange_file(exchange).with_suffix(".lock")
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get_table(self, exchange: str) -> list:
        file = self._exchange_file(exchange)
        try:
            table = loads(bytes_to_str(file.read_bytes()))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ChannelError(f"Cannot open {file}") from exc
        return [filesystem.exchange_queue_t(*entry) for entry in table]

    def _write_table(self, exchange: str, queues: list) -> None:
        try:
            write_atomically(
                self._exchange_file(exchange), str_to_bytes(dumps(queues)), self.control_folder / STAGING
            )
        except OSError as exc:
            raise ChannelError(f"Cannot write {self._exchange_file(exchange)}") from exc

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        with self._table_lock(exchange):
            queues = self.get_table(exchange)
            if entry not in queues:
                self._write_table(exchange, [entry, *queues])

    def _delete(
        self, queue: str, exchange: str, routing_key: str, pattern: str, *args: object, **kwargs: object
    ) -> None:
        virtual.Channel._delete(self, queue, exchange, routing_key, pattern, *args, **kwargs)
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        with self._table_lock(exchange):
            queues = self.get_table(exchange)
            if entry in queues:
                self._write_table(exchange, [q for q in queues if q != entry])


class Transport(filesystem.Transport):
    Channel = Channel


def register() -> None:
    """`filesystem://` URLs get this transport in this process (kombu resolves schemes by alias)."""
    TRANSPORT_ALIASES["filesystem"] = f"{__name__}:Transport"
