"""mbkit: a reproducible companion to MetaBalance (He et al., WWW 2022) and its PCGrad follow-up."""

__version__ = "0.1.0"
