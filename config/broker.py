"""The embedded broker: kombu's filesystem transport with atomic files and acks that hold.

kombu's own transport creates a message file empty and then writes it, and moves a message it
takes to the system temporary folder before reading it. A worker that lists the folder in
between takes an empty or partial file: `loads` raises, the file is already removed, the message
is lost and the worker stops on an "unrecoverable" error (celery/kombu#1551). Exchange tables
have the same window when they are first written. And a message it handed to a worker lives
only in that worker's memory until acked: `kill -9` loses it.

Here:
- every file is written under a name nobody reads and renamed into place (a rename within one
  filesystem is atomic), so a reader sees a whole message or none; names start with the
  zero-padded wall-clock time in ns, so sorting them is sending order;
- a channel takes a message by renaming it into a folder of its own under `.taken/` (of two
  takers exactly one wins) and keeps the file there until the message is acked; a reject with
  requeue, or a close with messages unacked, puts it back in the queue. Queues consumed without
  acks (remote control) drop the file once read;
- a channel holds an flock on its folder while it lives; the kernel frees it when the process
  dies, however it dies, and any other channel that finds a folder nobody holds puts its
  messages back in the queue (at least once: tasks are idempotent). Stale staged parts go too;
- a file that cannot be decoded is moved to `rejected/` and logged, never dropped in silence.
`config.celery` registers this transport for `filesystem://`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
import uuid
from contextlib import contextmanager, suppress
from pathlib import Path

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem, virtual
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

logger = logging.getLogger("gatehouse.broker")

STAGING = ".staging"  # files being written; the leading dot keeps them out of every queue
TAKEN = ".taken"  # one folder per consuming channel: messages handed out and not yet acked
REJECTED = "rejected"  # files that could not be decoded, kept for an operator
SWEEP_SECONDS = 30.0  # how often a consuming channel looks for folders of dead channels
STALE_SECONDS = 3600.0  # a staged part or a half-made folder this old belongs to a dead writer


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


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on the folder `path`, or None if another process holds it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


class QoS(virtual.QoS):
    """kombu's in-memory bookkeeping, plus the file: an ack removes it, a reject settles it."""

    def ack(self, delivery_tag: str) -> None:
        super().ack(delivery_tag)
        self.channel._settle(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        super().reject(delivery_tag, requeue=requeue)  # requeue: _restore put a copy back first
        self.channel._settle(delivery_tag)


class Channel(filesystem.Channel):
    QoS = QoS

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._held: dict[str, Path] = {}  # delivery tag → its file in our taken folder
        self._held_lock = threading.Lock()  # acks may come from other threads
        self._no_ack_queues: set[str] = set()
        self._own: Path | None = None  # our folder under .taken/, made on the first take
        self._own_fd: int | None = None
        self._swept_at = 0.0

    @property
    def _queue_folder(self) -> Path:
        return Path(self.data_folder_in)

    def _put(self, queue: str, payload: dict, **kwargs: object) -> None:
        name = f"{time.time_ns():020d}_{uuid.uuid4()}.{queue}.msg"
        out = Path(self.data_folder_out)
        try:
            write_atomically(out / name, str_to_bytes(dumps(payload)), out / STAGING)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {name!r} to directory") from exc

    def basic_consume(self, queue: str, no_ack: bool, *args: object, **kwargs: object) -> object:
        (self._no_ack_queues.add if no_ack else self._no_ack_queues.discard)(queue)
        return super().basic_consume(queue, no_ack, *args, **kwargs)

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: object) -> object:
        message = super().basic_get(queue, no_ack=no_ack, **kwargs)
        if message is not None and no_ack:
            self._settle(message.delivery_tag)
        return message

    def _get(self, queue: str) -> dict:
        wanted = f"{queue}.msg"
        folder = self._queue_folder
        own = self._own_folder()
        for name in sorted(os.listdir(folder)):
            if name.partition(".")[2] != wanted:
                continue
            try:
                os.rename(folder / name, own / name)  # atomic: one taker only
            except OSError:
                continue  # another channel took it first
            path = own / name
            try:
                payload = path.read_bytes()
            except OSError as exc:
                raise ChannelError(f"Cannot read file {name!r} from queue.") from exc
            try:
                message = loads(bytes_to_str(payload))
            except ValueError:
                self._reject(path)
                continue
            properties = message.get("properties") if isinstance(message, dict) else None
            tag = properties.get("delivery_tag") if isinstance(properties, dict) else None
            if tag is None or queue in self._no_ack_queues:  # nothing will ack it
                path.unlink(missing_ok=True)
            else:
                with self._held_lock:
                    self._held[tag] = path
            return message
        raise virtual.Empty()

    def _restore(self, message: object) -> None:
        super()._restore(message)  # a copy back in the queue first: at least once
        self._settle(message.delivery_tag)  # type: ignore[attr-defined]

    def _settle(self, delivery_tag: str) -> None:
        with self._held_lock:
            path = self._held.pop(delivery_tag, None)
        if path is not None:
            path.unlink(missing_ok=True)

    # --- our taken folder, and the folders of channels that died ------------------------------

    def _own_folder(self) -> Path:
        if self._own is None:
            taken = self._queue_folder / TAKEN
            taken.mkdir(exist_ok=True)
            ident = f"{os.getpid()}-{uuid.uuid4().hex}"
            making = taken / f".new-{ident}"  # locked before it gets a name a sweep looks at
            making.mkdir()
            fd = _try_lock(making)
            if fd is None:
                raise ChannelError(f"Cannot lock {making}")
            os.rename(making, taken / ident)
            self._own, self._own_fd = taken / ident, fd
        if time.monotonic() - self._swept_at >= SWEEP_SECONDS or not self._swept_at:
            self._swept_at = time.monotonic()
            self._sweep()
        return self._own

    def _sweep(self) -> None:
        """Give back what dead channels held; drop parts and half-made folders of dead writers."""
        folder = self._queue_folder
        taken = folder / TAKEN
        now = time.time()
        for entry in os.scandir(taken):
            path = Path(entry.path)
            if path == self._own or not entry.is_dir():
                continue
            if entry.name.startswith(".new-"):
                if now - entry.stat().st_mtime > STALE_SECONDS:
                    with suppress(OSError):
                        path.rmdir()
                continue
            fd = _try_lock(path)
            if fd is None:
                continue  # its channel is alive
            try:
                names = sorted(os.listdir(path))
                for name in names:
                    with suppress(OSError):
                        os.rename(path / name, folder / name)
                with suppress(OSError):
                    path.rmdir()
                if names:
                    logger.warning("broker: %d unacked message(s) of a dead consumer put back", len(names))
            finally:
                os.close(fd)
        staging = Path(self.data_folder_out) / STAGING
        if staging.is_dir():
            for entry in os.scandir(staging):
                if entry.name.endswith(".part") and now - entry.stat().st_mtime > STALE_SECONDS:
                    with suppress(OSError):
                        os.unlink(entry.path)

    def close(self) -> None:
        super().close()  # restores what is unacked (→ _restore → back in the queue)
        if self._own_fd is not None:
            with suppress(OSError):
                if self._own is not None and not any(self._own.iterdir()):
                    self._own.rmdir()
            os.close(self._own_fd)  # what is left, if anything, a sweep gives back
            self._own_fd = None

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
