"""User-facing errors: the CLI prints them as one line `imgfs: <message>` and exits non-zero."""


class ImgfsError(Exception):
    """An error caused by the user's input or environment, not by a bug."""

    exit_code = 1


class InvalidReference(ImgfsError):
    """A name that is not a valid image reference."""


class NotFound(ImgfsError):
    """An image, tag, container or blob that does not exist."""


class Conflict(ImgfsError):
    """The operation would break something that is in use (e.g. rmi of a used image)."""


class BadInput(ImgfsError):
    """An input file (tarball, archive, blob) that is corrupt, truncated or hostile."""


class RegistryError(ImgfsError):
    """A registry refused a request, failed it, or could not be reached."""


class Unauthorized(RegistryError):
    """The registry wants credentials we do not have, or refused the ones we sent."""
