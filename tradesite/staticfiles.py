"""The static files storage: whitenoise's hashed, compressed copies once collected, each file's own name before."""

from __future__ import annotations

from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticStorage(CompressedManifestStaticFilesStorage):
    """collectstatic writes content-hashed names with gzip and brotli copies, and a manifest; pages then link the
    hashed names (a name missing from the manifest is an error, as in Django). Without a manifest (collectstatic never
    ran: the test suite, a bare runserver) a page links the file's own name, which whitenoise finds in the apps'
    folders (WHITENOISE_USE_FINDERS)."""

    def stored_name(self, name: str) -> str:
        if not self.hashed_files:  # no manifest: nothing was collected
            return name
        return str(super().stored_name(name))
