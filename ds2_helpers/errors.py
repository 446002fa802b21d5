"""The exception types whose message already names the file and the fix (the CLI prints them plainly)."""

from ds2_helpers.atomic import ExistingResultError
from ds2_helpers.config import ParameterError
from ds2_helpers.download import DownloadError
from ds2_helpers.espeak import SynthesisError
from ds2_helpers.features import AudioError
from ds2_helpers.labels import LabelError
from ds2_helpers.librispeech import ManifestError
from ds2_helpers.run_folder import RunFolderError



class CheckpointError(ValueError):
    """A checkpoint that does not fit the network, listing the parameters and why."""


class DecoderError(RuntimeError):
    """A decoder that cannot be built here, with what to install or pass instead."""


class ExportError(RuntimeError):
    """An export or an exported-model run that cannot work, with the reason."""


USER_ERRORS: tuple[type[Exception], ...] = (ParameterError, DownloadError, SynthesisError, AudioError, LabelError,
                                            ManifestError, CheckpointError, DecoderError, ExportError,
                                            RunFolderError, ExistingResultError, FileNotFoundError)
