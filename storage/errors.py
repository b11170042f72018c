"""Storage errors: the SCP maps these to DICOM failure statuses, never to Success."""


class StorageError(Exception):
    """Base class: something could not be made durable."""


class DiskFullError(StorageError):
    """Free space is below the configured floor; refuse rather than fill the disk."""


class InvalidUIDError(StorageError):
    """A UID that cannot be used as a file name (empty, too long, not digits and dots)."""
