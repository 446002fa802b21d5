"""ds2_helpers: the tested code behind the DeepSpeech2-on-MindSpore course workbook."""

from ds2_helpers import onednn as _onednn

_onednn.configure()  # ONEDNN_MAX_CPU_ISA=AVX2 unless set: oneDNN's AVX-512 convolutions were many times slower

__version__ = "0.1.0"
