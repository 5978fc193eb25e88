"""The rate limiter's `memory://` storage, made safe for gunicorn's threads.

limits 5.8.0's MemoryStorage restarts its expiry timer with a check-then-start that two threads
can run at once: both see the old timer dead, both replace it, and the second `start()` of one
Timer raises "threads can only be started once", a 500 for an ordinary paid request under load.
Fixed upstream (alisaifee/limits#352) but in no release yet; this subclass takes the same lock
the fix does, and registers under the same scheme so that every `memory://` URI gets it. Remove
it once a release with the fix is pinned.
"""
import threading

from limits.storage import MemoryStorage


class ThreadSafeMemoryStorage(MemoryStorage):
    STORAGE_SCHEME = ["memory"]

    def __init__(self, *args, **kwargs):
        self._timer_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def _MemoryStorage__schedule_expiry(self) -> None:  # the parent's private method, by its mangled name
        with self._timer_lock:
            if not self.timer.is_alive():
                self.timer = threading.Timer(0.01, self._MemoryStorage__expire_events)
                self.timer.daemon = True
                self.timer.start()
