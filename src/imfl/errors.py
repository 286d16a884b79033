"""One exception family. Every message is written for the person running imfl: it names the file,
line, field or value at fault and says what to do. The CLI prints it on one line, without a traceback."""


class ImflError(Exception):
    """Base of every error imfl raises on purpose."""


class ConfigError(ImflError):
    """A setting is missing, of the wrong type, or inconsistent with another."""


class DataError(ImflError):
    """An input file is missing or one of its rows is malformed."""


class BudgetError(ImflError):
    """The annotation budget cannot be spent as configured (e.g. larger than the pool)."""


class ModelError(ImflError):
    """A model could not be found or loaded."""


class AnnotatorError(ImflError):
    """An annotator cannot label the items it was given."""


class Rejected(ImflError):
    """A person's label or request that cannot be taken; nothing was written. The web server answers each kind with
    its HTTP status (``server.py``); the terminal and file imports print the message."""


class NotFound(Rejected):
    """The request names someone or something that does not exist (e.g. a person nobody registered)."""


class Conflict(Rejected):
    """The request clashes with the state of the run: the item is not waiting, someone else holds it, the name is taken."""


class InvalidLabel(Rejected):
    """The label is not one of the run's labels."""
