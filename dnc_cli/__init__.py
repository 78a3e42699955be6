"""dnc: deep neural collapse and the AGOP (Beaglehole, Sukenik, Mondelli, Belkin, NeurIPS 2024) as a CLI."""

__version__ = "0.1.0"
