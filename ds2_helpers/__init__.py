"""ds2_helpers: the tested code behind the DeepSpeech2-on-MindSpore course workbook."""

__version__ = "0.1.0"
