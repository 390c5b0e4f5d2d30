"""The bundle error and the names every bundle module shares."""

from __future__ import annotations

from edgeflow.errors import UserInputError


class BundleError(UserInputError):
    """A bundle cannot be built, read, verified, signed or extracted. The message is one line:
    what is wrong (naming the bundle, file or key) and what to do."""


#: the file name suffix of a bundle (``edgeflow bundle build`` writes NAME-VERSION.efb)
BUNDLE_SUFFIX = ".efb"
